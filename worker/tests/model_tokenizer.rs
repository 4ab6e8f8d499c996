// Tokenizer training (byte-level BPE, no prefix space) and the shared prompt template.

use sapllm_engine::template::{encode_example, encode_prompt, parse_response, response_text, routing_prompt};
use sapllm_model::tokenizer::{SPECIAL_TOKENS, Tokenizer};

fn corpus() -> Vec<String> {
    (0..200)
        .map(|i| {
            format!(
                "Invoice {i} from vendor ACME-{} routed to FI-AP with company code 10{} and amount {}.50 EUR",
                i % 7,
                i % 3,
                i * 13
            )
        })
        .collect()
}

#[test]
fn trained_bpe_is_byte_level_without_prefix_space() {
    let tok = Tokenizer::train_bpe(corpus().into_iter(), 400).unwrap();
    assert!(tok.vocab_size() <= 400 && tok.vocab_size() > 300, "vocab {}", tok.vocab_size());
    for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tok.token_to_id(s), Some(i as u32));
    }
    assert_eq!((tok.bos_id, tok.eos_id, tok.pad_id), (Some(1), 2, 3));
    // Byte-level: any text round-trips, including unseen characters.
    for text in ["Invoice 7 routed to FI-AP", "  leading spaces", "ünïcödé ✓ 日本", "{\"a\":1}\n"] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
    // Merges were learnt (common words are fewer tokens than bytes).
    assert!(tok.encode("Invoice").unwrap().len() < 4);
    // Saved with add_prefix_space off, and it reloads identically.
    let dir = tempfile::tempdir().unwrap();
    tok.save(dir.path()).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("tokenizer.json")).unwrap()).unwrap();
    assert_eq!(json["pre_tokenizer"]["type"], "ByteLevel");
    assert_eq!(json["pre_tokenizer"]["add_prefix_space"], false);
    let again = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(again.encode("vendor ACME-3").unwrap(), tok.encode("vendor ACME-3").unwrap());
    assert_eq!(again.eos_id, 2);
}

#[test]
fn domain_words_are_one_token_each_within_the_vocabulary_and_survive_a_reload() {
    let words = sapllm_sap::catalog::Catalog::builtin().domain_tokens();
    assert!(words.iter().any(|w| w == "sales_quotation") && words.iter().any(|w| w == "EXCEPTION_HANDLING"));
    assert!(words.iter().any(|w| w == "API_SALES_QUOTATION_SRV/A_SalesQuotation"), "{words:?}");
    let tok = Tokenizer::train_bpe_with_words(corpus().into_iter(), 400, &words).unwrap();
    assert!(tok.vocab_size() <= 400, "vocab {}", tok.vocab_size());
    let dir = tempfile::tempdir().unwrap();
    tok.save(dir.path()).unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    for w in &words {
        assert_eq!(tok.encode(w).unwrap().len(), 1, "{w} is one token");
    }
    // Matched inside JSON text too, and everything round-trips.
    let text = r#"{"doc_type":"sales_quotation","endpoint":"API_SALES_QUOTATION_SRV/A_SalesQuotation"}"#;
    let ids = tok.encode(text).unwrap();
    assert!(ids.contains(&tok.token_to_id("sales_quotation").unwrap()));
    assert_eq!(tok.decode(&ids).unwrap(), text);
    // Inside a longer word it is matched too, and the text still round-trips.
    let ids = tok.encode("sales_orders").unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), "sales_orders");
    // The grammar engine sees them as ordinary tokens (forced tokens need their bytes).
    let env = sapllm_engine::tok_env::ModelTokEnv::new(&tok).unwrap();
    let id = tok.token_to_id("sales_order").unwrap();
    use toktrie::TokenizerEnv;
    assert_eq!(env.tok_trie().token(id), b"sales_order");
    assert_eq!(env.tokenize_bytes(b"\"sales_order\""), tok.encode("\"sales_order\"").unwrap());
    // Too many words for the vocabulary: a clear error, not a silently larger vocabulary.
    let many: Vec<String> = (0..200).map(|i| format!("word_{i}")).collect();
    let e = Tokenizer::train_bpe_with_words(corpus().into_iter(), 400, &many).unwrap_err();
    assert!(e.to_string().contains("whole words"), "{e}");
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Decision {
    process: String,
    confidence: f32,
}

#[test]
fn template_builds_prompt_and_masks_the_response() {
    let tok = Tokenizer::train_bpe(corpus().into_iter(), 400).unwrap();
    // A struct, not a json! map: map key order depends on serde_json's preserve_order feature.
    #[derive(serde::Serialize)]
    struct Request {
        doc_type: &'static str,
        amount: f64,
    }
    let prompt = routing_prompt(&Request { doc_type: "invoice", amount: 12.5 }).unwrap();
    assert!(prompt.starts_with("### Instruction\n"));
    assert!(prompt.contains("### Request\n{\"doc_type\":\"invoice\",\"amount\":12.5}\n"), "{prompt}");
    assert!(prompt.ends_with("### Response\n"));
    let d = Decision { process: "FI-AP".into(), confidence: 0.5 };
    let resp = response_text(&d).unwrap();
    let (ids, mask) = encode_example(&tok, &prompt, &resp).unwrap();
    let p = encode_prompt(&tok, &prompt).unwrap();
    assert_eq!(&ids[..p.len()], p.as_slice(), "training prompt tokens == serving prompt tokens");
    assert_eq!(ids[0], 1);
    assert_eq!(*ids.last().unwrap(), tok.eos_id);
    assert!(mask[..p.len()].iter().all(|&m| m == 0) && mask[p.len()..].iter().all(|&m| m == 1));
    assert_eq!(parse_response::<Decision>(&format!("{resp}\n### Request")).unwrap(), d);
    assert!(parse_response::<Decision>("not json").is_err());
}

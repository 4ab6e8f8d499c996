// Tokenizer training (byte-level BPE, no prefix space) and the shared prompt template.

use sapllm_worker::model::template::{
    encode_example, encode_prompt, parse_response, response_text, routing_prompt,
};
use sapllm_worker::model::tokenizer::{SPECIAL_TOKENS, Tokenizer};

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

//! THE prompt/response template, shared by SFT, PPO, evaluation and serving. Keeping one
//! definition is what makes a model trained in one stage behave in the next.
//!
//! A routing example is tokenized as
//!
//! ```text
//! <s> ### Instruction\n{instruction}\n### Request\n{request JSON}\n### Response\n {response JSON} </s>
//! ^BOS   prompt_text(...)                                                     response_text(...) ^EOS
//! ```
//!
//! Prompt and response are tokenized SEPARATELY and concatenated ([`encode_example`]), so the
//! prompt tokens the model sees in training are exactly those serving feeds it ([`encode_prompt`]);
//! BPE merges never cross the boundary. The request and decision are compact JSON (serde field
//! order), the response ends with EOS, and [`STOP_SEQUENCE`] is a fallback stop for a base
//! model that has not learnt EOS.

use anyhow::{Context, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

use sapllm_model::tokenizer::Tokenizer;

/// Instruction of a routing request.
pub const ROUTING_INSTRUCTION: &str =
    "Route this SAP document: choose the target process and fields. Answer with one JSON object.";

/// Instruction of an exception-handling request.
pub const EXCEPTION_INSTRUCTION: &str =
    "Handle this SAP processing exception: decide the corrective action. Answer with one JSON object.";

/// A generation stop string (the start of a next section).
pub const STOP_SEQUENCE: &str = "\n###";

fn build(instruction: &str, sections: &[(&str, &str)]) -> String {
    let mut s = format!("### Instruction\n{instruction}\n");
    for (title, body) in sections {
        s.push_str(&format!("### {title}\n{body}\n"));
    }
    s.push_str("### Response\n");
    s
}

/// Prompt text for a routing request given as JSON text.
pub fn routing_prompt_json(request_json: &str) -> String {
    build(ROUTING_INSTRUCTION, &[("Request", request_json)])
}

/// Prompt text for a routing request (serialized as compact JSON).
pub fn routing_prompt<T: Serialize>(request: &T) -> Result<String> {
    Ok(routing_prompt_json(&serde_json::to_string(request).context("serializing the routing request")?))
}

/// Prompt text for the exception-handling variant: the original request plus the exception.
pub fn exception_prompt<R: Serialize, E: Serialize>(request: &R, exception: &E) -> Result<String> {
    let req = serde_json::to_string(request).context("serializing the request")?;
    let exc = serde_json::to_string(exception).context("serializing the exception")?;
    Ok(build(EXCEPTION_INSTRUCTION, &[("Request", &req), ("Exception", &exc)]))
}

/// Response text for a decision (compact JSON; EOS is added as a token, not text).
pub fn response_text<T: Serialize>(decision: &T) -> Result<String> {
    serde_json::to_string(decision).context("serializing the decision")
}

/// Parses a generated response back into a decision: the text up to a stop sequence, trimmed.
pub fn parse_response<T: DeserializeOwned>(text: &str) -> Result<T> {
    let body = text.split(STOP_SEQUENCE).next().unwrap_or("").trim();
    serde_json::from_str(body).with_context(|| format!("response is not a valid decision: {body:?}"))
}

/// Prompt token ids as serving and rollouts feed them: BOS (if the tokenizer has one) + prompt.
pub fn encode_prompt(tok: &Tokenizer, prompt: &str) -> Result<Vec<u32>> {
    let mut ids: Vec<u32> = tok.bos_id.into_iter().collect();
    ids.extend(tok.encode(prompt)?);
    Ok(ids)
}

/// A training example: token ids and a loss mask (1 on response tokens and EOS, 0 on the
/// prompt), same length.
pub fn encode_example(tok: &Tokenizer, prompt: &str, response: &str) -> Result<(Vec<u32>, Vec<u8>)> {
    let mut ids = encode_prompt(tok, prompt)?;
    let n_prompt = ids.len();
    ids.extend(tok.encode(response)?);
    ids.push(tok.eos_id);
    let mut mask = vec![0u8; n_prompt];
    mask.resize(ids.len(), 1);
    Ok((ids, mask))
}

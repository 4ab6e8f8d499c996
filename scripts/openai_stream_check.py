#!/usr/bin/env python3
"""Checks `serve`'s chat streaming with OpenAI's own Python client (optional, not run in CI;
worker/tests/serve_stream.rs is the test that is).

    pip install openai
    sapllm-worker serve --base runs/routing-tiny/pretrain/model --precision f32 --port 8080 &
    python3 scripts/openai_stream_check.py --url http://127.0.0.1:8080/v1 [--token-file FILE]

For a free completion, a JSON-schema-constrained one and a routing request, `stream=True`
(with `stream_options={"include_usage": True}`) must give the role first, deltas whose
concatenation is the `stream=False` answer's content, one finish reason (the same), the same
usage, and end cleanly (the client stops at `data: [DONE]`). Exits 1 on the first mismatch.
"""

import argparse
import json
import sys

from openai import OpenAI


def check(client: OpenAI, model: str, name: str, **kwargs) -> None:
    whole = client.chat.completions.create(model=model, stream=False, **kwargs)
    stream = client.chat.completions.create(
        model=model, stream=True, stream_options={"include_usage": True}, **kwargs
    )
    roles, deltas, finishes, usage, chunks = [], [], [], None, 0
    for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk", chunk
        if chunk.usage is not None:
            assert chunk.choices == [], "the usage chunk has no choices"
            usage = chunk.usage
            continue
        choice = chunk.choices[0]
        if choice.delta.role:
            roles.append(choice.delta.role)
        if choice.delta.content:
            deltas.append(choice.delta.content)
        if choice.finish_reason:
            finishes.append(choice.finish_reason)
    content = "".join(deltas)
    expected = whole.choices[0].message.content
    problems = []
    if roles != ["assistant"]:
        problems.append(f"roles {roles}")
    if content != expected:
        problems.append(f"streamed {content!r} != {expected!r}")
    if finishes != [whole.choices[0].finish_reason]:
        problems.append(f"finish reasons {finishes} != {whole.choices[0].finish_reason}")
    if usage is None or usage.model_dump() != whole.usage.model_dump():
        problems.append(f"usage {usage} != {whole.usage}")
    if problems:
        print(f"FAIL {name}: " + "; ".join(problems))
        sys.exit(1)
    print(f"ok   {name}: {chunks} chunks, {len(deltas)} content deltas, finish {finishes[0]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--model", default="sapllm")
    ap.add_argument("--token-file", help="the bearer token serve was given (--auth-token-file)")
    args = ap.parse_args()
    token = open(args.token_file).read().strip() if args.token_file else "none"
    client = OpenAI(base_url=args.url, api_key=token, max_retries=0)
    question = [{"role": "user", "content": "Which API posts a goods receipt?"}]
    check(client, args.model, "free completion", messages=question, max_tokens=48)
    schema = {
        "type": "object",
        "properties": {"api": {"type": "string"}},
        "required": ["api"],
        "additionalProperties": False,
    }
    check(
        client,
        args.model,
        "json_schema completion",
        messages=question,
        max_tokens=48,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    )
    document = {
        "doc_type": "purchase_order",
        "adc_json": {
            "PONumber": "4500001",
            "companyCode": "1010",
            "vendor": {"id": 100347},
            "purchasingOrg": "1010",
            "purchasing_group": "001",
            "Currency": "EUR",
            "lineItems": [{"material": "TG-1", "qty": 5, "uom": "ST", "netPrice": 2.5, "plant": "1010"}],
        },
    }
    check(client, args.model, "routing request", messages=[{"role": "user", "content": json.dumps(document)}])


if __name__ == "__main__":
    main()

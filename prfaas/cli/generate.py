"""`prfaas generate`: run one prompt through the engine offline."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from prfaas.engine.engine import Engine, EngineConfig, InvalidRequest
from prfaas.engine.sampling import SamplingParams
from prfaas.model.checkpoint import CheckpointError
from prfaas.model.tiny import TINY_NAME, resolve_model
from prfaas.model.tokenizer import Tokenizer, load_tokenizer

BREAKDOWN = ("route_s", "queue_s", "prefill_s", "transfer_tail_s", "decode_admit_s")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate tokens for one prompt with a local engine")
    p.add_argument("--model", default=TINY_NAME, help=f"checkpoint folder or {TINY_NAME!r} (default)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (needs a tokenizer)")
    src.add_argument("--token-ids", help="comma-separated prompt token ids, e.g. 1,2,3")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-token-ids", default="", help="comma-separated extra stop tokens")
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--router", help="HOST:PORT of a running router (`prfaas up`); default: a local engine")
    p.add_argument("--tenant", default=None, help="tenant id (with --router)")
    p.add_argument("--token", default=None, help="bearer token for the router (default: $PRFAAS_AUTH_TOKEN)")
    p.add_argument("--tls-ca", default="", help="with --router: use TLS, verifying the router with this CA (PEM)")
    p.add_argument("--tls-cert", default="", help="client certificate (PEM) for mutual TLS, with --tls-key")
    p.add_argument("--tls-key", default="", help="the client certificate's private key (PEM)")
    p.set_defaults(run=run)


def parse_ids(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise InvalidRequest(f"{what} must be comma-separated integers, got {text!r}") from exc


def prompt_ids(args: argparse.Namespace, tokenizer: Tokenizer | None) -> list[int]:
    if args.token_ids is not None:
        return parse_ids(args.token_ids, "--token-ids")
    if tokenizer is None:
        raise InvalidRequest(
            f"model {args.model} has no usable tokenizer (tokenizer.json + `pip install tokenizers`); use --token-ids"
        )
    return tokenizer.encode(args.prompt)


def sampling_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling flags, for the engine's `SamplingParams` and the SDK's `Sampling` alike."""
    return {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "stop_token_ids": tuple(parse_ids(args.stop_token_ids, "--stop-token-ids")),
        "ignore_eos": args.ignore_eos,
    }


def run_remote(args: argparse.Namespace) -> int:
    """Generate through a router with the SDK; the JSON adds where and how it was prefilled."""
    from prfaas.client import Client, PrfaasError, Sampling, TlsSettings

    prompt: str | list[int] = args.prompt if args.token_ids is None else parse_ids(args.token_ids, "--token-ids")
    try:
        sampling = Sampling(**sampling_fields(args))
        tls = TlsSettings(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_ca or args.tls_cert else None
        token = args.token or os.environ.get("PRFAAS_AUTH_TOKEN")
        with Client(args.router, token=token, tls=tls) as client:
            r = client.generate(prompt, sampling, tenant_id=args.tenant)
    except (PrfaasError, ValueError) as exc:
        print(f"prfaas generate: error: {exc}", file=sys.stderr)
        return 2
    route = r.route
    if args.json:
        out = {
            "token_ids": list(r.token_ids),
            "text": r.text,
            "finish_reason": r.finish_reason,
            "route": route.route if route else None,
            "reason": route.reason if route else None,
            "cached_tokens": route.cached_tokens if route else 0,
            "kv_bytes": route.kv_bytes if route else 0,
            "ttft_s": route.ttft_s if route else None,
            "ttft_breakdown_s": {k: getattr(route, k) for k in BREAKDOWN} if route else None,
            "elapsed_s": round(r.elapsed_s, 4),
        }
        print(json.dumps(out))
    else:
        print(r.text or " ".join(map(str, r.token_ids)))
        if route is not None:
            print(
                f"[{route.route}: {route.reason}; cached {route.cached_tokens}, {route.kv_bytes} KV bytes, "
                f"TTFT {route.ttft_s:.3f}s]",
                file=sys.stderr,
            )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.router:
        return run_remote(args)
    try:
        params = SamplingParams(**sampling_fields(args))
        folder = resolve_model(args.model)
        tokenizer = load_tokenizer(args.model, folder)
        ids = prompt_ids(args, tokenizer)
        engine = Engine.from_pretrained(folder, EngineConfig())
        t0 = time.perf_counter()
        result = engine.generate([ids], params)[0]
        elapsed = time.perf_counter() - t0
    except (InvalidRequest, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"prfaas generate: error: {exc}", file=sys.stderr)
        return 2
    text = tokenizer.decode(result.token_ids) if tokenizer is not None else None
    if args.json:
        out = {
            "token_ids": result.token_ids,
            "finish_reason": result.finish_reason,
            "prompt_tokens": len(ids),
            "elapsed_s": round(elapsed, 4),
        }
        if text is not None:
            out["text"] = text
        print(json.dumps(out))
    else:
        print(text if text is not None else " ".join(map(str, result.token_ids)))
        print(f"[{len(result.token_ids)} tokens, {result.finish_reason}, {elapsed:.2f}s]", file=sys.stderr)
    return 0

"""``rtl-kernels merge``: merge K fine-tuned checkpoints into one routed save (or one dense checkpoint)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..plugins import load_object

DESCRIPTION = """\
Merge K experts fine-tuned from one base model. Every checkpoint is a safetensors state dict of the
architecture returned by --model (a `module:factory` no-argument callable). The default writes an
rtl.save directory holding the routed merged model: shared base and delta, K bit masks and K scales
for every nn.Linear and nn.Conv2d (other tensors, e.g. norms, hold the experts' mean);
ticket k approximates expert k (load it with rtl.load(PATH, rtl.merge.convert_delta(factory(), K))).
--dense writes one merged state dict (model.safetensors) of the base architecture instead.
"""

EPILOG = """\
examples:
  rtl-kernels merge --model mypkg.models:mlp --base base.safetensors --experts a.safetensors b.safetensors --out merged
  rtl-kernels merge --model mypkg.models:mlp --base base.safetensors --experts *.safetensors --method emr --out merged
  rtl-kernels merge ... --method ties --dense --option k=20 --option lam=0.8 --out ties_model
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ..merge import METHODS

    p = sub.add_parser(
        "merge", help="merge K fine-tuned checkpoints into one routed model", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--model", required=True, metavar="MODULE:FACTORY", help="a no-argument callable returning the architecture")
    p.add_argument("--base", required=True, type=Path, help="safetensors state dict of the pre-trained base")
    p.add_argument("--experts", required=True, nargs="+", type=Path, help="safetensors state dicts of the K experts (ticket order)")
    p.add_argument("--method", default="tall", choices=METHODS, help="merge method (default: tall, λ = 0.4)")
    p.add_argument("--dense", action="store_true", help="write one plain merged model instead of the routed one")
    p.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="method option, VALUE parsed as JSON (e.g. lam=0.3, k=20, lambdas=[0.3,0.4], start=\"ta\"); repeatable",
    )  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.set_defaults(func=run)


def load_factory(spec: str):
    """``module:callable`` → the callable (a clear error when it is not one)."""
    if spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"--model: expected MODULE:FACTORY (e.g. mypkg.models:make_mlp), got {spec!r}")
    return load_object(spec, "--model")


def parse_options(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option: expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value  # a bare word, e.g. start=ta
    return out


def _checkpoint(factory, path: Path, name: str):
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file {path}")
    model = factory()
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{name}: {path} does not match --model (missing {sorted(missing)[:6]}, unexpected {sorted(unexpected)[:6]})")
    return model.eval()


def run(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from .. import save
    from ..merge import merge_experts

    factory = load_factory(args.model)
    base = _checkpoint(factory, args.base, "--base")
    experts = [_checkpoint(factory, p, f"--experts[{i}]") for i, p in enumerate(args.experts)]
    options = parse_options(args.option)
    merged = merge_experts(base, experts, method=args.method, routed=not args.dense, **options)
    meta = {"merge": {"method": args.method, "options": options, "experts": [str(p) for p in args.experts], "model": args.model}}
    if args.dense:
        args.out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in merged.state_dict().items()}
        save_file(state, str(args.out / "model.safetensors"), metadata={"merge": json.dumps(meta["merge"])})
        print(f"wrote the {args.method} merge of {len(experts)} experts to {args.out / 'model.safetensors'}")
    else:
        save(merged, args.out, metadata=meta)
        print(f"wrote the routed {args.method} merge of {len(experts)} experts (tickets 0..{len(experts) - 1}) to {args.out}")
    return 0

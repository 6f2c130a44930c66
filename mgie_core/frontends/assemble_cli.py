"""``python -m mgie_core assemble``: the command line over :func:`mgie_core.assemble.assemble`."""

from __future__ import annotations

import argparse

from ..runtime.devices import DTYPES

STORED = "stored"
EPILOG = """\
example:
  python -m mgie_core assemble --llama llama-7b --llava-delta LLaVA-Lightning-7B-delta-v1-1 \\
      --mgie mgie_7b.tar.gz --ip2p instruct-pix2pix --clip clip-vit-large-patch14 --out mgie-7b.safetensors

With --download, --llama, --llava-delta, --ip2p and --clip may be Hugging Face repo ids (fetched into the
Hugging Face cache, resumable) and --mgie may be "apple" (Apple's tarball, fetched into $MGIE_CACHE or
~/.cache/mgie, resumable; $MGIE_TARBALL_URL overrides its address). No LLaMA-7B is chosen for you: its
license is Meta's (README, 'Getting the weights')."""


def add_assemble_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("assemble", help="build MGIE-7B from the downloaded pieces into one bundle",
                            description="Apply the LLaVA delta to LLaMA-7B as LLaVA's script does, add Apple's MGIE "
                                        "weights, CLIP and the InstructPix2Pix VAE, and write one safetensors bundle "
                                        "(what convert writes for Apple's folders).",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama", help="Meta's LLaMA-7B in the Hugging Face format (safetensors or .bin shards, "
                                        "config.json, tokenizer)")
    parser.add_argument("--llava-delta", help="the folder of liuhaotian/LLaVA-Lightning-7B-delta-v1-1")
    parser.add_argument("--llava", help="an already merged LLaVA-7B-v1, instead of --llama and --llava-delta")
    parser.add_argument("--mgie", required=True,
                        help="Apple's mgie_7b.tar.gz as downloaded, or a folder with mllm.pt and unet.pt")
    parser.add_argument("--ip2p", required=True, help="the diffusers folder of timbrooks/instruct-pix2pix")
    parser.add_argument("--clip", required=True, help="the folder of openai/clip-vit-large-patch14")
    parser.add_argument("--out", required=True, help="the bundle to write, FILE.safetensors")
    parser.add_argument("--dtype", choices=(STORED, *DTYPES), default=STORED,
                        help="precision of the bundle's weights (default: %(default)s, each as its piece stores it: "
                             "LLaVA and Apple's weights fp16, CLIP and the VAE as downloaded, the same weights "
                             "Apple's folders load)")
    parser.add_argument("--download", action="store_true",
                        help="fetch the pieces given as Hugging Face repo ids, and Apple's tarball for --mgie apple "
                             "(default: off, nothing is downloaded)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no log lines")
    parser.set_defaults(run=run_assemble)


def run_assemble(args: argparse.Namespace) -> int:
    from ..assemble import assemble
    from ..assemble.download import resolve_pieces

    pieces = resolve_pieces(vars(args), download=args.download, progress=not args.quiet)
    out = assemble(args.out, mgie=pieces["mgie"], ip2p=pieces["ip2p"], clip=pieces["clip"], llama=pieces["llama"],
                   llava_delta=pieces["llava_delta"], llava=pieces["llava"],
                   dtype=None if args.dtype == STORED else DTYPES[args.dtype], progress=not args.quiet)
    print(out)
    return 0

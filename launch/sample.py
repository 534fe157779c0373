"""Sample text from a model.

    python launch/sample.py --hf gpt2 --prompt "Hello, I'm a language model," --num-samples 5 --max-new-tokens 30
    python launch/sample.py --checkpoint runs/x/ckpt --temperature 0.8 --top-k 50 --seed 1 --device cuda

Works on CPU and GPU; the same --seed gives the same samples on the same device.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gptdist.cli import main_guard, make_parser  # noqa: E402
from gptdist.errors import GptdistError  # noqa: E402
from gptdist.evals.runner import add_model_source_args  # noqa: E402


def parse_args(argv):
    p = make_parser(__doc__)
    add_model_source_args(p)
    p.add_argument("--prompt", default="Hello, I'm a language model,", help="empty: start from <|endoftext|>")
    p.add_argument("--num-samples", type=int, default=4, help="samples to draw")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per sample")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50, help="0 = no top-k cut")
    p.add_argument("--seed", type=int, default=1337, help="sampling seed")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from gptdist.dist import choose_device
    from gptdist.evals.runner import load_model_for_eval
    from gptdist.evaluate import sample_text
    from gptdist.tokenizer import get_tokenizer

    try:
        if args.num_samples < 1 or args.max_new_tokens < 0 or args.temperature < 0:
            raise GptdistError("--num-samples must be >= 1, --max-new-tokens >= 0 and --temperature >= 0")
        device = choose_device(args.device)
        enc = get_tokenizer()
        model = load_model_for_eval(args.checkpoint, args.hf, args.random_init, device, args.seed)
        samples = sample_text(
            model, enc, args.prompt, args.num_samples, args.max_new_tokens,
            args.temperature, args.top_k or None, args.seed, device,
        )
    except GptdistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for i, text in enumerate(samples):
        print(f"--- sample {i}")
        print(text)
    return 0


if __name__ == "__main__":
    main_guard(main, sys.argv[1:])

"""Tokenise a text source into GPT-2 token shards (llm.c format) plus manifest.json.

    python launch/prepare_data.py --source tinyshakespeare --out data/tinyshakespeare
    python launch/prepare_data.py --source hf:HuggingFaceFW/fineweb-edu --hf-config sample-10BT \\
        --out data/fineweb-edu-10B
    python launch/prepare_data.py --source mirror:webtext/c4/c4_sample.jsonl --out data/c4-sample

See docs/data.md. The logic lives in gptdist/data/prepare.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gptdist.cli import main_guard  # noqa: E402
from gptdist.data.prepare import main  # noqa: E402

if __name__ == "__main__":
    main_guard(main, sys.argv[1:])

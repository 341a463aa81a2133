"""Ad hoc: the embedded model's KV cache at two context sizes, read from llama.cpp's own load log, for the
`context_tokens` setting's description (model_settings.py).

    .venv/bin/python bench/adhoc/kv_cache.py            # 4096 and 32768
    .venv/bin/python bench/adhoc/kv_cache.py 8192 16384
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOAD = """
from llama_cpp import Llama
from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.llm.local import ensure_model_file
Llama(model_path=str(ensure_model_file(get_settings().model_dir)), n_ctx={n}, n_threads=1, verbose=True)
"""
SIZE = re.compile(r"llama_kv_cache: size =\s*([\d.]+) MiB")  # one line per cache (sliding-window and global layers)

for n in [int(a) for a in sys.argv[1:]] or [4096, 32768]:
    log = subprocess.run([sys.executable, "-c", LOAD.format(n=n)], cwd=ROOT, capture_output=True, text=True).stderr
    mib = sum(float(m) for m in SIZE.findall(log))
    print(f"n_ctx {n}: KV cache {mib:.0f} MiB, {mib * 1024 / n:.1f} KiB a token")

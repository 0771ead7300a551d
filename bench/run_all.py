"""Every benchmark, one after another, then docs/benchmarks.md: ``make bench`` (about 20 min on 2 quiet cores).

    python bench/run_all.py            # all
    python bench/run_all.py --only cold_start,throughput
    python bench/run_all.py --report   # only re-render docs/benchmarks.md from docs/bench/*.json

Heavy steps run one at a time (the machine is small); each writes its JSON under docs/bench/.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

_ONLY = flags.DEFINE_list("only", [], "Steps to run (default: all).")
_REPORT = flags.DEFINE_bool("report", False, "Only render docs/benchmarks.md.")

STEPS = {
    "matmul": ["bench/matmul.py", "--repeats", "7"],
    "decoder_smollm2": ["bench/decoder.py", "--config", "configs/smollm2_commonsense.py", "--repeats", "5"],
    "cold_start": ["bench/cold_start.py", "--config", "configs/smollm2_commonsense.py", "--repeats", "5",
                   "--first_repeats", "2"],
    "throughput": ["bench/throughput.py", "--config", "configs/smollm2_commonsense.py", "--repeats", "3"],
    "scaling": ["bench/scaling.py", "--repeats", "2"],
    "speedup": ["bench/speedup.py", "--results", "docs/results/results.json"],
    "speedup_quickstart": ["bench/speedup.py", "--results", "docs/quickstart/results.json", "--name",
                           "speedup_quickstart"],
    # the oracle LoRA's own checkpoint curve (needs `make demo`'s workdir/quickstart; scores are cached there)
    "speedup_quickstart_curve": ["bench/speedup.py", "--config", "configs/quickstart.py", "--workdir",
                                 "workdir/quickstart", "--task", "arc_c", "--limit", "100", "--cached_only",
                                 "--name", "speedup_quickstart_arc_c"],
    "decoder_qwen": ["bench/decoder.py", "--config", "configs/qwen25_0p5b_commonsense.py", "--repeats", "2",
                     "--batch_size", "1", "--nobreakdown"],
    "xla_flags": ["bench/xla_flags.py", "--config", "configs/smollm2_commonsense.py", "--repeats", "3"],
    "device_script_cpu": ["bench/device_h200_decoder.py", "--tiny", "--out", "/tmp/dnd_device_tiny"],
    "device_generator_cpu": ["bench/device_h200.py", "--tiny", "--allow_cpu", "--out", "/tmp/dnd_device_tiny"],
    "device_function_loss_cpu": ["bench/device_function_loss.py", "--tiny", "--allow_cpu", "--out",
                                 "/tmp/dnd_device_tiny"],
}


def main(argv) -> None:
    del argv
    if not _REPORT.value:
        for name, cmd in STEPS.items():
            if _ONLY.value and name not in _ONLY.value:
                continue
            if name == "speedup_quickstart_curve":
                if not (common.ROOT / "workdir/quickstart/zoo/arc_c").is_dir():
                    print(f"== {name}: skipped (no workdir/quickstart zoo: run `make demo` first)", flush=True)
                    continue
                res = json.loads((common.ROOT / "docs/quickstart/results.json").read_text())
                cmd = [*cmd, "--dnd_acc", str(res["targets"]["arc_c"]["systems"]["dnd"]["cloze"]["accuracy"])]
            t = time.perf_counter()
            print(f"== {name}: python {' '.join(cmd)}", flush=True)
            subprocess.run([sys.executable, *cmd], cwd=common.ROOT, check=True)
            print(f"== {name}: {time.perf_counter() - t:.0f} s", flush=True)
    import report

    print(f"wrote {report.write()}")


if __name__ == "__main__":
    app.run(main)

"""lfdm's benchmark: one markdown table of generation, training, data and FVD speed on this machine.

Every measurement runs in its own fresh Python process (so "peak memory" is that measurement's
own peak: resident set on the CPU, max allocated on CUDA), with random weights unless it says
otherwise, and reports the median of --repeats timed runs after --warmup untimed ones. The
table's header names the machine (CPU model, threads, GPU, torch) and the load average, because
other processes on the same cores inflate every figure.

Measurements:
  generate      `GenerationPipeline.generate` per video: the denoising loop (sampler + U-Net) and
                the decode (all K frames in one batched pass) timed separately, for each sampler
                (DDIM-10 and DPM-Solver++-10; DDPM-1000 on CUDA only), batch sizes (--batches) and
                precisions (--precisions); at the paper configuration (128x128, 40 frames, stage
                one = recipes/mug128.yaml, U-Net dim 64 x (1,2,4,8), 768-d condition) and at the
                bundled model's (its real weights when weights/synthfaces64 exists)
  train lfae    one stage-one training step at the paper configuration (recipes/mug128.yaml,
                VGG19 perceptual pyramid with random VGG weights, equivariance, Adam), batch 1 on
                CPU, the recipe's batch on CUDA
  train dm      one stage-two step at the paper configuration (batch 1 on CPU, 5 on CUDA, 40
                frames): flow targets from the frozen stage one in one batched pass versus read
                from the flow cache, then U-Net forward + backward + Adam + EMA
  data          frame fitting (480x640 -> 128x128, pad) and SynthFaces rendering (64x64) in
                frames per second, one thread, no video codec
  i3d           the Kinetics-400 I3D (FVD features), 16x224x224 clips, clips per second

Usage:
  python benchmarks/bench.py                           # everything this device can run
  python benchmarks/bench.py --only generate --configs paper --precisions fp32,bf16
  python benchmarks/bench.py --device cuda --batches 1,10 --output benchmarks/results/h100.md

The reference figures quoted in the notes column are the authors' code measured the same way on
a 2-core CPU VM (see benchmarks/results/README.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine_info, median, peak_memory_mib, sync_for, timed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLERS = {"ddim10": ("ddim", 10), "dpmpp10": ("dpmpp", 10), "ddpm1000": ("ddpm", 1000)}
# The authors' implementation on a 2-core CPU VM (benchmarks/results/README.md), seconds.
REFERENCE_CPU = {
    ("paper", "ddim10", "denoise"): 46.0,
    ("paper", "ddim10", "decode"): 9.4,
    ("paper", "ddim10", "total"): 55.5,
    ("paper", "ddim10", "peak"): 1590.0,
    ("train", "dm"): 36.2,
}


# ---------------------------------------------------------------------------------------------
# Workers: each runs in its own process and prints one JSON object


def paper_pipeline(device: torch.device, precision: str, compile: bool = False):
    from lfdm_cli.config.recipe import load_recipe
    from lfdm_cli.diffusion.model import DMSpec, FlowDiffusion
    from lfdm_cli.lfae.model import LFAE
    from lfdm_cli.pipeline import GenerationPipeline

    torch.manual_seed(0)
    recipe = load_recipe("mug128")
    lfae = LFAE(recipe.lfae.model, recipe.data.size)
    c, side, _ = lfae.latent_shape
    spec = DMSpec(fea_channels=c, num_frames=40, latent_size=side, encoder="bert", conditions=["happiness"])
    dm = FlowDiffusion(spec, condition_rows=torch.randn(1, 768))
    return GenerationPipeline(lfae, dm, device=device, precision=precision, compile=compile)


def bundled_pipeline(device: torch.device, precision: str, model: str | None, compile: bool = False):
    from lfdm_cli.pipeline import GenerationPipeline, default_model_path

    path = Path(model) if model else default_model_path()
    if path.exists():
        return (GenerationPipeline.from_folder(path, device=device, precision=precision, compile=compile),
                "trained weights")
    from lfdm_cli.config.recipe import load_recipe
    from lfdm_cli.diffusion.model import DMSpec, FlowDiffusion
    from lfdm_cli.lfae.model import LFAE

    torch.manual_seed(0)
    recipe = load_recipe("synthfaces64")
    lfae = LFAE(recipe.lfae.model, recipe.data.size)
    c, side, _ = lfae.latent_shape
    spec = DMSpec(unet=recipe.dm.unet, diffusion=recipe.dm.diffusion, fea_channels=c,
                  num_frames=recipe.dm.train.num_frames, latent_size=side, encoder="learned",
                  conditions=["happiness"])
    return (GenerationPipeline(lfae, FlowDiffusion(spec), device=device, precision=precision, compile=compile),
            "random weights")


def work_generate(p: dict) -> dict:
    device = torch.device(p["device"])
    compile = bool(p.get("compile"))
    if p["config"] == "paper":
        pipe, weights = paper_pipeline(device, p["precision"], compile), "random weights"
    else:
        pipe, weights = bundled_pipeline(device, p["precision"], p.get("model"), compile)
    b = p["batch"]
    images = torch.rand(b, 3, pipe.resolution, pipe.resolution, generator=torch.Generator().manual_seed(0))
    cond = [pipe.conditions[0]] * b
    rows = []
    for name in p["samplers"]:
        sampler, steps = SAMPLERS[name]
        parts = {"sample_s": [], "decode_s": [], "encode_s": [], "total_s": []}
        first = None
        for i in range(p["warmup"] + p["repeats"]):
            r = pipe.generate(images, cond, sampler=sampler, steps=steps, seeds=list(range(i, i + b)))
            first = r.timings["total_s"] if first is None else first
            if i >= p["warmup"]:
                for k in parts:
                    parts[k].append(r.timings[k])
        rows.append({"sampler": name, "frames": pipe.default_frames, "resolution": pipe.resolution,
                     "weights": weights, "first_call_s": first, **{k: median(v) / b for k, v in parts.items()}})
    return {"rows": rows, "peak_mib": peak_memory_mib(device)}


def work_train_lfae(p: dict) -> dict:
    from lfdm_cli.config.recipe import load_recipe
    from lfdm_cli.lfae.losses import LFAETrainingModule, PerceptualPyramidLoss, VGG19Features
    from lfdm_cli.lfae.model import LFAE
    from lfdm_cli.lfae.transforms import RandomTPS

    device = torch.device(p["device"])
    sync = sync_for(device)
    recipe = load_recipe("mug128")
    train = recipe.lfae.train
    batch = p["batch"] or (train.batch_size if device.type == "cuda" else 1)
    torch.manual_seed(0)
    model = LFAE(recipe.lfae.model, recipe.data.size)
    perceptual = PerceptualPyramidLoss(train.scales, train.loss_weights.perceptual, VGG19Features())
    module = LFAETrainingModule(model, train, perceptual).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=train.lr, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(0)
    source = torch.rand(batch, 3, 128, 128, generator=g).to(device)
    driving = torch.rand(batch, 3, 128, 128, generator=g).to(device)

    def step():
        transform = RandomTPS.sample(batch, train.transform_params, generator=g, device=device)
        opt.zero_grad(set_to_none=True)
        losses, _ = module(source, driving, transform)
        sum(losses.values()).backward()
        opt.step()

    t = median(timed(step, p["warmup"], p["repeats"], sync))
    return {"batch": batch, "step_s": t, "peak_mib": peak_memory_mib(device)}


def work_train_dm(p: dict) -> dict:
    from lfdm_cli.config.recipe import load_recipe
    from lfdm_cli.diffusion.model import DMSpec, FlowDiffusion, volume_from_flow
    from lfdm_cli.lfae.model import LFAE
    from lfdm_cli.training.ema import EMA

    device = torch.device(p["device"])
    sync = sync_for(device)
    batch = p["batch"] or (5 if device.type == "cuda" else 1)
    k = 40
    torch.manual_seed(0)
    recipe = load_recipe("mug128")
    lfae = LFAE(recipe.lfae.model, recipe.data.size).to(device).eval().requires_grad_(False)
    c, side, _ = lfae.latent_shape
    spec = DMSpec(fea_channels=c, num_frames=k, latent_size=side, encoder="learned", conditions=["happiness"])
    dm = FlowDiffusion(spec).to(device).train()
    opt = torch.optim.Adam(dm.parameters(), lr=2e-4, betas=(0.9, 0.99))
    ema = EMA(dm, decay=0.999)
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(batch, k, 3, 128, 128, generator=g).to(device)
    with torch.no_grad():
        flow, occ = lfae.flow_and_occlusion(clip[:, 0], clip, chunk_size=80)
    cached_flow, cached_occ = flow.cpu().numpy(), occ.cpu().numpy()

    def targets_batched():
        with torch.no_grad():
            z = lfae.encode(clip[:, 0]).latent
            f, o = lfae.flow_and_occlusion(clip[:, 0], clip, chunk_size=80)
        return z, f, o

    def targets_cached():
        # The cache hands the data loader numpy arrays read from disk; the step moves them over.
        with torch.no_grad():
            z = lfae.encode(clip[:, 0]).latent
        return z, torch.from_numpy(cached_flow).to(device), torch.from_numpy(cached_occ).to(device)

    def network(z, f, o):
        opt.zero_grad(set_to_none=True)
        dm.loss_for_names(volume_from_flow(f, o), z, ["happiness"] * batch).loss.backward()
        opt.step()
        ema.update(dm, 1)

    out = {"batch": batch}
    for name, targets in (("without_cache", targets_batched), ("with_cache", targets_cached)):
        out[name + "_s"] = median(timed(lambda: network(*targets()), p["warmup"], p["repeats"], sync))
    out["peak_mib"] = peak_memory_mib(device)
    return out


def work_data(p: dict) -> dict:
    import numpy as np

    from lfdm_cli.data.synthfaces import render_video
    from lfdm_cli.io import fit_frames

    torch.set_num_threads(1)
    frames = np.random.default_rng(0).integers(0, 256, (32, 480, 640, 3), dtype=np.uint8)
    fit = median(timed(lambda: fit_frames(frames, 128, "pad"), 1, p["repeats"], lambda: None))
    synth = median(timed(lambda: render_video(0, 0, "happiness", 0, frames=32, size=64), 1, p["repeats"],
                         lambda: None))
    return {"fit_fps": 32 / fit, "synth_fps": 32 / synth}


def work_i3d(p: dict) -> dict:
    from lfdm_cli.metrics.i3d import load_i3d

    device = torch.device(p["device"])
    sync = sync_for(device)
    model = load_i3d(device=device).to(memory_format=torch.channels_last_3d)
    b = p["batch"] or 4
    x = (torch.rand(b, 3, 16, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    x = x.to(device, memory_format=torch.channels_last_3d)

    def forward():
        with torch.inference_mode():
            model(x)

    t = median(timed(forward, p["warmup"], p["repeats"], sync))
    return {"batch": b, "clips_per_s": b / t}


WORKERS = {"generate": work_generate, "train_lfae": work_train_lfae, "train_dm": work_train_dm,
           "data": work_data, "i3d": work_i3d}


def worker_main(name: str, params: str) -> None:
    p = json.loads(params)
    torch.set_num_threads(p["threads"])
    result = WORKERS[name](p)
    sys.stdout.write("BENCH-RESULT " + json.dumps(result) + "\n")


# ---------------------------------------------------------------------------------------------
# The orchestrator


def run_worker(name: str, params: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--params", json.dumps(params)]
    print(f"  running {name} {json.dumps({k: v for k, v in params.items() if k not in ('threads',)})}",
          file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT "):])
    raise SystemExit(f"benchmark {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds < 1 else f"{seconds:.2f} s"


def ref_note(key, unit: str = "s") -> str:
    ref = REFERENCE_CPU.get(key)
    if ref is None:
        return ""
    value = fmt_s(ref) if unit == "s" else f"{ref:.0f} {unit}"
    return f"reference (authors' code, 2-core CPU): {value}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all logical CPUs)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--only", default="generate,train,data,i3d",
                    help="comma-separated: generate, train, data, i3d")
    ap.add_argument("--configs", default="paper,bundled", help="generation configurations: paper, bundled")
    ap.add_argument("--batches", default=None, help="generation batch sizes (default: 1 on CPU, 1,10 on CUDA)")
    ap.add_argument("--precisions", default=None,
                    help="generation precisions (default: fp32,bf16 where bf16 runs; fp16 too on CUDA)")
    ap.add_argument("--samplers", default=None,
                    help="ddim10, dpmpp10, ddpm1000 (default: all on CUDA, ddim10,dpmpp10 on CPU)")
    ap.add_argument("--compile", action="store_true",
                    help="also measure generation with the U-Net under torch.compile (and its warm-up)")
    ap.add_argument("--model", default=None, help="the bundled configuration's model folder (default: weights/synthfaces64)")
    ap.add_argument("--output", "-o", type=Path, default=None, help="also write the markdown here")
    args = ap.parse_args()
    if args.worker:
        worker_main(args.worker, args.params)
        return

    import os

    device = torch.device(args.device)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    info = machine_info(device)
    cuda = device.type == "cuda"
    batches = [int(b) for b in (args.batches or ("1,10" if cuda else "1")).split(",")]
    default_prec = ["fp32", "bf16", "fp16"] if cuda else (["fp32", "bf16"] if info["bf16_cpu"] else ["fp32"])
    precisions = args.precisions.split(",") if args.precisions else default_prec
    samplers = args.samplers.split(",") if args.samplers else (
        ["ddim10", "dpmpp10", "ddpm1000"] if cuda else ["ddim10", "dpmpp10"])
    only = set(args.only.split(","))
    common = {"device": str(device), "threads": threads, "repeats": args.repeats, "warmup": args.warmup}
    load_before = load_average()
    rows: list[tuple[str, str, str, str]] = []

    if "generate" in only:
        for config in args.configs.split(","):
            for precision, compiled in [(p, False) for p in precisions] + (
                    [(precisions[0], True)] if args.compile else []):
                for batch in batches:
                    res = run_worker("generate", {**common, "config": config, "precision": precision,
                                                  "batch": batch, "samplers": samplers, "model": args.model,
                                                  "compile": compiled})
                    for r in res["rows"]:
                        what = (f"generate, {config} ({r['resolution']}px, {r['frames']} frames, {r['weights']}), "
                                f"{r['sampler']}, {precision}{' compiled' if compiled else ''}, batch {batch}")
                        if compiled:
                            rows.append((what + ": first call (includes compiling)", fmt_s(r["first_call_s"]),
                                         "one-off per input shape", ""))
                        ref = ("paper", r["sampler"]) if not cuda and config == "paper" and batch == 1 else None
                        rows.append((what + ": denoise", fmt_s(r["sample_s"]) + " per video",
                                     ref_note(ref + ("denoise",)) if ref else "", ""))
                        rows.append((what + ": decode", fmt_s(r["decode_s"]) + " per video",
                                     ref_note(ref + ("decode",)) if ref else "", ""))
                        total = r["total_s"]
                        speedup = ""
                        if ref and (ref + ("total",)) in REFERENCE_CPU:
                            speedup = f"{REFERENCE_CPU[ref + ('total',)] / total:.1f}x the reference"
                        rows.append((what + ": total (encode + denoise + decode)", fmt_s(total) + " per video",
                                     ref_note(ref + ("total",)) if ref else "", speedup))
                    peak_ref = ref_note(("paper", "ddim10", "peak"), "MiB") \
                        if not cuda and config == "paper" and batch == 1 else ""
                    rows.append((f"generate, {config}, {precision}, batch {batch}: peak memory",
                                 f"{res['peak_mib']:.0f} MiB", peak_ref, ""))
    if "train" in only:
        res = run_worker("train_lfae", {**common, "batch": None})
        rows.append((f"train lfae, paper config, batch {res['batch']}: one step", fmt_s(res["step_s"]),
                     "VGG19 pyramid + equivariance + Adam", f"peak {res['peak_mib']:.0f} MiB"))
        res = run_worker("train_dm", {**common, "batch": None})
        for name in ("without_cache", "with_cache"):
            s = res[name + "_s"]
            rows.append((f"train dm, paper config, batch {res['batch']}, 40 frames, {name.replace('_', ' ')}",
                         f"{fmt_s(s)} per step ({1 / s:.3f} steps/s)",
                         ref_note(("train", "dm")) if not cuda and res["batch"] == 1 else "",
                         f"peak {res['peak_mib']:.0f} MiB"))
    if "data" in only:
        res = run_worker("data", {**common, "threads": 1})
        rows.append(("preprocess: fit 480x640 frames to 128x128 (pad)", f"{res['fit_fps']:.0f} frames/s",
                     "1 thread", ""))
        rows.append(("SynthFaces: render 64x64 frames", f"{res['synth_fps']:.0f} frames/s", "1 thread", ""))
    if "i3d" in only:
        res = run_worker("i3d", {**common, "batch": None})
        rows.append((f"I3D (FVD features), 16x224x224 clips, batch {res['batch']}", f"{res['clips_per_s']:.2f} clips/s",
                     "", ""))

    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# lfdm benchmark: {info['gpu'] or info['cpu']}",
        "",
        f"- Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs; GPU: {info['gpu'] or 'none'}; "
        f"bf16 CPU kernels: {'yes' if info['bf16_cpu'] else 'no'}",
        f"- Software: torch {info['torch']}, Python {info['python']}, device {info['device']}, "
        f"{threads} torch threads",
        f"- Method: each group in a fresh process; median of {args.repeats} timed runs after {args.warmup} "
        f"warm-up run(s); peak memory = the process's peak resident set (CPU) or max allocated (CUDA); "
        f"load average before {load_before}, after {load_average()}; measured {when}",
        "- Command: `python benchmarks/bench.py " + " ".join(sys.argv[1:]) + "`",
        "",
        "| measurement | result | notes | |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=args.output.parent, delete=False, suffix=".tmp") as f:
            f.write(text)
        Path(f.name).replace(args.output)


if __name__ == "__main__":
    main()

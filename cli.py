"""The command line of every script: one-line errors (die), the flags (configure), the guard that turns Ctrl-C and
SIGTERM into one line (main_guard), and the device and precision a run takes.

Flags, nanoGPT style: every UPPERCASE name assigned a literal at the top level of a script, above the line
`# ---- end of flags`, is a flag, and --lowercase_name overrides it; `--help` lists them with their comments.
Constants below that line are fixed tables, not flags.

This module imports nothing of the project's: every other module may import it.
"""

import argparse
import ast
import contextlib
import errno
import os
import re
import sys

import torch

FLAGS_END = "# ---- end of flags"  # the line below a script's flags (it may go on: "# ---- end of flags (below: ...)")


def die(message):
    """Stop the script with a one-line error and exit status 1 (no traceback)."""
    raise SystemExit(f"error: {message}")



# ----------------------------------------------------------------------------------------------------
# Devices and precision. torch.cuda, torch.backends and the environment are parameters, so that a test can fake a
# machine with GPUs (and torchrun's variables) and check every choice below without one.

PRECISIONS = ("fp32", "tf32", "bf16")  # what --amp can name besides auto
RANK_TIMEOUT_HOURS = 72  # torchrun ranks meet only at barriers: the first to finish waits there for the slowest


def pick_device(name="auto", env=None, cuda=None):
    """The torch.device this process runs on, always with an index on CUDA (torch.cuda.set_device needs one).

    auto: CUDA when torch sees a GPU, else the CPU. Under torchrun (WORLD_SIZE > 1) a CUDA rank runs on
    cuda:LOCAL_RANK: a device with an index is refused (every rank would share that GPU), and LOCAL_RANK must name
    a GPU of this machine. Both are checked here, before any process group is made, so that a wrong launch stops
    at once instead of waiting at the rendezvous."""
    env, cuda = os.environ if env is None else env, torch.cuda if cuda is None else cuda
    world, local = int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
    if name == "auto":
        name = "cuda" if cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        die(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)")
    if device.type not in ("cpu", "cuda"):
        die(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)")
    if device.type == "cpu":
        return torch.device("cpu")
    if not cuda.is_available():
        die(f"device {name!r} asked for, but torch sees no CUDA GPU")
    count = cuda.device_count()
    if world > 1:
        if device.index is not None:
            die(f"--device {name}: under torchrun each rank runs on cuda:LOCAL_RANK; pass --device auto or cuda, "
                f"or CUDA_VISIBLE_DEVICES to choose the GPUs")
        if local >= count:
            die(f"torchrun rank with LOCAL_RANK {local}, but this machine has {count} GPU(s): launch at most {count} "
                f"process(es) per node (torchrun --nproc_per_node={count})")
        return torch.device("cuda", local)
    index = 0 if device.index is None else device.index
    if index >= count:
        die(f"device {name!r}: this machine has {count} GPU(s) (cuda:0 .. cuda:{count - 1})")
    return torch.device("cuda", index)


def cpu_has_bf16():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def precision(amp, device, env=None, cuda=None):
    """What --amp means here: 'fp32' (true float32, no TF32 on a GPU), 'tf32' (CUDA only: float32 storage, TF32
    convolutions and matmuls) or 'bf16' (bf16 arithmetic in the network).

    auto is fp32: bf16 moved the criteria's passing sets by more than FZ seed noise, and the sweep's correct counts
    by up to 3.5 points (README, "Precision"; benchmarks/bench_precision.py). The environment variable AMP_AUTO (fp32
    or bf16) sets what auto means, so that the test suite can run in either precision on any machine and a user can
    choose bf16's speed knowingly; on a GPU without native bf16 (compute capability below 8: torch's
    is_bf16_supported also counts emulation) it stays fp32."""
    env, cuda = os.environ if env is None else env, torch.cuda if cuda is None else cuda
    if amp == "auto":
        amp = env.get("AMP_AUTO", "") or "fp32"
        if amp not in ("fp32", "bf16"):
            die(f"AMP_AUTO must be fp32 or bf16 (what --amp auto means), not {amp!r}")
        if amp == "bf16" and device.type == "cuda" and cuda.get_device_capability(device)[0] < 8:
            amp = "fp32"
    if amp not in PRECISIONS:
        die(f"amp must be auto, {', '.join(PRECISIONS)}, not {amp!r}")
    if amp == "tf32" and device.type != "cuda":
        die("--amp tf32 is a GPU mode (TensorFloat-32 tensor cores); on the CPU use fp32 or bf16")
    return amp


def amp_dtype(prec):
    """The dtype that autocast and the weights take for a precision ('bf16' -> torch.bfloat16), None for float32."""
    return torch.bfloat16 if prec == "bf16" else None


def autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def set_tf32(on, backends=None):
    """TF32 on or off for cuDNN convolutions and cuBLAS matmuls. Where torch has the fp32_precision settings (2.9 on),
    only those are used: torch raises when the legacy allow_tf32 flags and the new settings are mixed."""
    backends = torch.backends if backends is None else backends
    value = "tf32" if on else "ieee"
    if hasattr(getattr(backends.cudnn, "conv", None), "fp32_precision"):
        backends.cudnn.conv.fp32_precision = value
        backends.cuda.matmul.fp32_precision = value
    else:
        backends.cudnn.allow_tf32 = on
        backends.cuda.matmul.allow_tf32 = on


def tf32_on(backends=None):
    """Whether cuDNN convolutions may use TF32, read through the same settings set_tf32 writes."""
    backends = torch.backends if backends is None else backends
    if hasattr(getattr(backends.cudnn, "conv", None), "fp32_precision"):
        return backends.cudnn.conv.fp32_precision == "tf32"
    return bool(backends.cudnn.allow_tf32)


@contextlib.contextmanager
def no_tf32():
    """with no_tf32(): true float32 convolutions inside (measurements), the setting before restored after."""
    was = tf32_on()
    set_tf32(False)
    try:
        yield
    finally:
        set_tf32(was)


def use_device(device, prec, cuda=None, backends=None):
    """Make a CUDA device current and set TF32 as the precision says (on for 'tf32' only: cuDNN's default is on,
    which would make an fp32 run TF32). Returns the device as result files record it ('cpu', 'cuda:0 NVIDIA H200')."""
    cuda = torch.cuda if cuda is None else cuda
    set_tf32(prec == "tf32", backends)
    if device.type != "cuda":
        return "cpu"
    if device.index is None:
        raise ValueError(f"use_device needs an indexed CUDA device (pick_device gives one), not {device}")
    cuda.set_device(device)
    return f"{device} {cuda.get_device_name(device.index)}"


def init_ranks(world, dist=None):
    """Under torchrun: join the process group. gloo, whatever the device: the ranks exchange only barriers, and a
    barrier must wait as long as the slowest rank's share of a sweep takes (NCCL's default is 10 minutes)."""
    import datetime
    dist = torch.distributed if dist is None else dist
    if world > 1:
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=RANK_TIMEOUT_HOURS))


def resolve_batch(value, device, per_item_bytes, cpu_default, cap, cuda=None, fraction=0.5):
    """--batch: a positive integer, or auto: cpu_default on the CPU; on a GPU as many items as `fraction` of its
    free memory holds at per_item_bytes each, rounded down to a multiple of 32, between 32 and cap."""
    cuda = torch.cuda if cuda is None else cuda
    text = str(value).strip().lower()
    if text != "auto":
        try:
            n = int(text)
        except ValueError:
            die(f"--batch takes a positive integer or auto, not {value!r}")
        if n < 1:
            die(f"--batch must be at least 1, not {n}")
        return n
    if device.type != "cuda":
        return cpu_default
    free, _total = cuda.mem_get_info(device)
    n = int(free * fraction // max(1, per_item_bytes)) // 32 * 32
    return max(32, min(cap, n))


# ----------------------------------------------------------------------------------------------------
# Flags: the UPPERCASE literals above FLAGS_END at the top level of a script.

def flag_names(path):
    """{flag name: its comment} of the script at `path`: every UPPERCASE name assigned a literal at the top level
    above the FLAGS_END line, in order. A script without that line has no flags."""
    with open(path) as f:
        source = f.read()
    lines = source.splitlines()
    end = next((i + 1 for i, line in enumerate(lines) if line.startswith(FLAGS_END)), 0)
    out = {}
    for node in ast.parse(source).body:
        if node.lineno >= end:
            break
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.isupper():
                try:
                    ast.literal_eval(node.value)
                except ValueError:
                    continue
                out[name] = lines[node.lineno - 1].partition("#")[2].strip()
    return out


def _parse_value(text, default, name):
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        die(f"--{name.lower()} takes true or false, not {text!r}")
    try:
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        die(f"--{name.lower()} takes a {type(default).__name__}, not {text!r}")
    if isinstance(default, (list, tuple)):
        kind = type(default[0]) if default else str
        return [_parse_value(t.strip(), kind(), name) for t in text.split(",") if t.strip()]
    if isinstance(default, dict):  # 'key:value,key:value' updates the named entries
        kind = type(next(iter(default.values()))) if default else str
        out = dict(default)
        for item in [t.strip() for t in text.split(",") if t.strip()]:
            key, sep, value = item.partition(":")
            if not sep or key.strip() not in default:
                die(f"--{name.lower()} takes key:value pairs with keys from {', '.join(map(str, default))}; got {item!r}")
            out[key.strip()] = _parse_value(value.strip(), kind(), name)
        return out
    return None if default is None and text.lower() == "none" else text


def help_line(comment, shown):
    """A flag's --help text: its comment, then '(default: VALUE)' unless the comment already says its default
    ('(default: ...)') or the value is empty (nothing to show: the comment says what empty means, or that it is required)."""
    said = re.search(r"\(default\b", comment)
    return comment if said or str(shown) == "" else f"{comment} (default: {shown})"


def closest_flag(typed, known):
    """The known flag nearest to a mistyped one ('--chanels' -> '--channels'), or None when none is near."""
    import difflib
    near = difflib.get_close_matches(typed.split("=")[0], known, n=1, cutoff=0.6)
    return near[0] if near else None


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: an unknown flag names the closest known one; exit status 2, as argparse's."""

    def error(self, message):
        known = [s for a in self._actions for s in a.option_strings if a.help != argparse.SUPPRESS]
        m = re.match(r"unrecognized arguments: (.*)", message)
        flags = [t for t in (m.group(1).split() if m else []) if t.startswith("-")]
        if flags:
            near = closest_flag(flags[0], known)
            message = f"unknown flag {flags[0].split('=')[0]}" + (f"; did you mean {near}?" if near else "")
        self.exit(2, f"error: {message} (python {self.prog} --help lists the flags)\n")


def configure(g, argv=None, description=None, aliases=None):
    """Override the script's constants (in its globals g) from the command line; return them as a dict.

    aliases: {old flag name: the constant it now sets}, for a flag that was renamed: --old still works (not listed by
    --help), with one line on stderr naming the new flag."""
    consts = flag_names(g["__file__"])
    parser = _Parser(prog=os.path.basename(g["__file__"]), description=description or (g.get("__doc__") or "").strip().split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)  # --block is not --blocks
    for name, comment in consts.items():
        default = g[name]
        shown = (",".join(map(str, default)) if isinstance(default, (list, tuple)) else
                 ",".join(f"{k}:{v}" for k, v in default.items()) if isinstance(default, dict) else default)
        flags = dict.fromkeys([f"--{name.lower()}", f"--{name.lower().replace('_', '-')}"])  # --pre_as_released, --pre-as-released
        extra = dict(nargs="?", const="true") if isinstance(default, bool) else {}  # --list alone means --list true
        parser.add_argument(*flags, dest=name, metavar=type(default).__name__.upper(), **extra,
                            help=help_line(comment, shown).replace("%", "%%"))
    aliases = aliases or {}
    for old, name in aliases.items():
        parser.add_argument(*dict.fromkeys([f"--{old}", f"--{old.replace('_', '-')}"]), dest=f"_alias_{old}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for old, name in aliases.items():
        text = getattr(args, f"_alias_{old}")
        if text is not None:
            what = re.split(r"[:;(]", consts.get(name, ""))[0].strip()  # the comment's first words: what the flag is
            print(f"note: --{old} is now --{name.lower()}" + (f" ({what})" if what else ""), file=sys.stderr)
            if getattr(args, name) is None:
                setattr(args, name, text)
    for name in consts:
        text = getattr(args, name)
        if text is not None:
            g[name] = _parse_value(text, g[name], name)
    return {name: g[name] for name in consts}


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a cluster scheduler sends before it kills a job), raised where Ctrl-C would be, so that every
    script saves on it exactly what it saves on Ctrl-C."""


_MAIN_PID = []  # the process main_guard runs in: forked helpers (a Pool, DataLoader workers) inherit the handler


def _terminate(signum, _frame):
    import signal
    if os.getpid() not in _MAIN_PID:  # a forked helper ends as SIGTERM ends it by default (Pool.terminate sends it)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Terminated()


def main_guard(main, interrupted="nothing was written"):
    """Run main(); Ctrl-C and SIGTERM end with one line saying what is true for the script (`interrupted`), and exit
    status 130 (Ctrl-C) or 143 (SIGTERM)."""
    import signal
    _MAIN_PID[:] = [os.getpid()]
    signal.signal(signal.SIGTERM, _terminate)
    try:
        main()
    except Terminated:
        print(f"\nterminated (SIGTERM): {interrupted}", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {interrupted}", file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # a full disk outside atomic_write (a PNG written directly): one line all the same
        # (a memory-mapped array on a full disk gets SIGBUS, not an error: the natural stage's arrays are preallocated)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        die(f"no space left on the device{where} ({os.strerror(e.errno)}); files written atomically before it are whole. "
            f"Free some space, then run the same command again to resume")



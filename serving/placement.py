"""CPU placement of worker processes that share a host (serving/procs.py).

A GPU worker's host work (kernel launches, the scheduler, image conversion) is latency-bound:
on a two-socket host it should run on the socket its GPU hangs off, and two workers should not
each start an intra-op thread pool as large as the whole host. So each worker reports the CPUs
local to its device (Linux: the GPU's PCI address → /sys/bus/pci/devices/<address>/local_cpulist;
a CPU worker: every CPU it may use), the front end splits each set of CPUs between the workers
that share it, whole cores at a time (SMT siblings stay together), and each worker pins itself to
its share and sets torch's thread count to the cores in it.

Skipped silently when anything is unknown (no sysfs, no PCI address, a single worker), and
turned off with SD_STUDIO_PIN_CPUS=0. Torch is only imported inside the worker-side functions.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV = "SD_STUDIO_PIN_CPUS"
SYSFS = Path("/sys")
NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def parse_cpulist(text: str) -> list[int]:
    """'0-15,32-47' (the kernel's list format) → the sorted CPU numbers; [] for an empty list.
    Raises ValueError on anything else."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        low, dash, high = part.partition("-")
        first, last = int(low), int(high) if dash else int(low)
        if first < 0 or last < first:
            raise ValueError(f"not a CPU range: {part!r}")
        cpus.update(range(first, last + 1))
    return sorted(cpus)


def pci_address(domain: int, bus: int, device: int) -> str:
    """sysfs's spelling of a PCI function 0: 0000:18:00.0 (lower-case hex)."""
    return f"{domain:04x}:{bus:02x}:{device:02x}.0"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def pci_address_of_uuid(uuid: str, proc: Path = NVIDIA_PROC) -> str | None:
    """The NVIDIA driver's own table (/proc/driver/nvidia/gpus/<address>/information holds
    'GPU UUID: GPU-…'), for a torch whose device properties lack the PCI numbers."""
    wanted = uuid.strip().lower().removeprefix("gpu-")
    try:
        entries = sorted(proc.iterdir())
    except OSError:
        return None
    for entry in entries:
        for line in (_read(entry / "information") or "").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "gpu uuid" and value.strip().lower().removeprefix("gpu-") == wanted:
                return entry.name.lower()
    return None


def local_cpus_of_pci(address: str, sysfs: Path = SYSFS) -> list[int] | None:
    text = _read(sysfs / "bus" / "pci" / "devices" / address / "local_cpulist")
    try:
        return parse_cpulist(text) if text is not None else None
    except ValueError:
        return None


def core_of(cpu: int, sysfs: Path = SYSFS) -> tuple[int, ...]:
    """The CPUs sharing cpu's physical core (SMT siblings), itself alone when unknown."""
    text = _read(sysfs / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology" / "thread_siblings_list")
    try:
        return tuple(parse_cpulist(text)) if text else (cpu,)
    except ValueError:
        return (cpu,)


def allowed_cpus() -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return None


def cuda_local_cpus(index: int = 0) -> list[int] | None:
    """The CPUs near CUDA device `index` that this process may use; None when unknown.
    Worker side (initialises CUDA, which a GPU worker does anyway)."""
    try:
        import torch

        props = torch.cuda.get_device_properties(index)
    except Exception:  # noqa: BLE001 — no CUDA, no device: nothing to place
        return None
    numbers = [getattr(props, name, None) for name in ("pci_domain_id", "pci_bus_id", "pci_device_id")]
    if all(isinstance(n, int) for n in numbers):
        address = pci_address(*numbers)
    else:
        address = pci_address_of_uuid(str(getattr(props, "uuid", "") or "")) if getattr(props, "uuid", None) else None
    local = local_cpus_of_pci(address) if address else None
    allowed = allowed_cpus()
    if not local or allowed is None:
        return None
    usable = sorted(set(local) & set(allowed))  # a container's cpuset may leave only part of the socket
    return usable or None


def local_cpus(device: str | None) -> list[int] | None:
    """What a worker on `device` reports: the CPUs near its GPU, or for a CPU worker every CPU
    it may use; None when unknown (that worker is then left alone)."""
    if device and device.startswith("cuda"):
        return cuda_local_cpus(0)  # a worker sees only its own GPU
    if device in (None, "", "cpu"):
        return allowed_cpus() if device == "cpu" else None
    return None


@dataclass(frozen=True)
class Share:
    cpus: tuple[int, ...]
    threads: int  # physical cores in cpus: torch's intra-op threads


def plan(local: list[list[int] | None], core=core_of) -> list[Share | None]:
    """Each worker's share of the CPUs: workers reporting the same CPU set split its physical
    cores evenly (contiguous runs, the first workers taking one more when it does not divide;
    SMT siblings never split), a worker alone on its set keeps all of it. None for a worker
    whose CPUs are unknown, and for every worker when fewer than two report."""
    if sum(1 for cpus in local if cpus) < 2:
        return [None] * len(local)
    groups: dict[tuple[int, ...], list[int]] = {}
    for slot, cpus in enumerate(local):
        if cpus:
            groups.setdefault(tuple(sorted(set(cpus))), []).append(slot)
    shares: list[Share | None] = [None] * len(local)
    for cpus, slots in groups.items():
        members = set(cpus)
        cores: list[tuple[int, ...]] = []
        for cpu in cpus:
            if not any(cpu in c for c in cores):
                cores.append(tuple(sorted(set(core(cpu)) & members)) or (cpu,))
        if len(cores) < len(slots):  # fewer cores than workers: they share the whole set
            for slot in slots:
                shares[slot] = Share(cpus, 1)
            continue
        each, extra = divmod(len(cores), len(slots))
        start = 0
        for i, slot in enumerate(slots):
            count = each + (1 if i < extra else 0)
            mine = cores[start:start + count]
            start += count
            shares[slot] = Share(tuple(sorted(c for core_cpus in mine for c in core_cpus)), len(mine))
    return shares


def apply(share: Share) -> dict:
    """Worker side: pin every thread of this process (and those it starts later) to the share's
    CPUs and size torch's intra-op pool to its cores. What was applied comes back."""
    import torch

    cpus = set(share.cpus)
    try:
        tasks = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tasks = [0]
    for task in tasks:
        try:
            os.sched_setaffinity(task, cpus)
        except OSError:  # a thread that ended meanwhile
            pass
    torch.set_num_threads(share.threads)
    return placed()


def pin_near_gpu() -> dict | None:
    """A process driving CUDA device 0 alone (a Ray replica: Ray sets its GPU and thread count)
    onto the CPUs near that GPU, its thread count unchanged; None when unknown or turned off."""
    if not enabled():
        return None
    near = cuda_local_cpus(0)
    if not near:
        return None
    import torch

    return apply(Share(tuple(near), torch.get_num_threads()))


def placed() -> dict:
    """This process's CPUs and torch threads as they are now (for the report and the bench)."""
    import torch

    return {"cpus": allowed_cpus(), "threads": torch.get_num_threads()}

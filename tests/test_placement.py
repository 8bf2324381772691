"""CPU placement of worker processes sharing a host (serving/placement.py): the kernel's CPU
lists, a GPU's PCI address to its local CPUs, and each worker's fair share (whole cores)."""
from __future__ import annotations

import pytest

from serving import placement
from serving.placement import Share, parse_cpulist, plan


def test_the_kernels_cpu_lists_are_read_as_cpu_numbers():
    assert parse_cpulist("0-15,32-47\n") == list(range(16)) + list(range(32, 48))
    assert parse_cpulist("3") == [3]
    assert parse_cpulist("0,2,4-5") == [0, 2, 4, 5]
    assert parse_cpulist("") == []
    for bad in ("5-2", "a-b", "-1", "1-"):
        with pytest.raises(ValueError):
            parse_cpulist(bad)


def smt_pairs(cpu: int) -> tuple[int, ...]:
    """A 2-socket host: 32 cores, CPU n and n+32 the two threads of one core."""
    first = cpu % 32
    return (first, first + 32)


SOCKET0 = list(range(16)) + list(range(32, 48))
SOCKET1 = list(range(16, 32)) + list(range(48, 64))


def test_two_gpus_on_one_socket_split_its_cores_and_keep_smt_siblings_together():
    first, second = plan([SOCKET0, SOCKET0], core=smt_pairs)
    assert first == Share(tuple(range(8)) + tuple(range(32, 40)), 8)
    assert second == Share(tuple(range(8, 16)) + tuple(range(40, 48)), 8)


def test_gpus_on_different_sockets_each_keep_their_socket():
    assert plan([SOCKET0, SOCKET1], core=smt_pairs) == [Share(tuple(SOCKET0), 16), Share(tuple(SOCKET1), 16)]


def test_uneven_splits_give_the_first_workers_one_core_more_and_use_every_core():
    shares = plan([list(range(8))] * 3, core=lambda cpu: (cpu,))
    assert [s.threads for s in shares] == [3, 3, 2]
    assert sorted(c for s in shares for c in s.cpus) == list(range(8))


def test_more_workers_than_cores_share_the_whole_set_with_one_thread_each():
    assert plan([[0, 1]] * 3, core=lambda cpu: (cpu,)) == [Share((0, 1), 1)] * 3


def test_nothing_is_placed_when_fewer_than_two_workers_know_their_cpus():
    assert plan([SOCKET0], core=smt_pairs) == [None]
    assert plan([SOCKET0, None], core=smt_pairs) == [None, None]
    shares = plan([SOCKET0, None, SOCKET0], core=smt_pairs)
    assert shares[1] is None and shares[0].threads == shares[2].threads == 8


def test_a_gpus_local_cpus_come_from_sysfs_by_its_lower_case_pci_address(tmp_path):
    address = placement.pci_address(0, 0x9A, 0)
    assert address == "0000:9a:00.0"
    device = tmp_path / "bus" / "pci" / "devices" / address
    device.mkdir(parents=True)
    (device / "local_cpulist").write_text("16-31,48-63\n")
    assert placement.local_cpus_of_pci(address, sysfs=tmp_path) == SOCKET1
    assert placement.local_cpus_of_pci("0000:01:00.0", sysfs=tmp_path) is None  # no such device: unknown


def test_without_pci_numbers_the_drivers_table_maps_the_gpu_uuid_to_its_address(tmp_path):
    for address, uuid in (("0000:18:00.0", "GPU-aaaa-1111"), ("0000:9A:00.0", "GPU-bbbb-2222")):
        (tmp_path / address).mkdir()
        (tmp_path / address / "information").write_text(
            f"Model: \t\t NVIDIA H200\nIRQ:   \t\t 17\nGPU UUID: \t {uuid}\nBus Location: \t {address}\n")
    assert placement.pci_address_of_uuid("GPU-bbbb-2222", proc=tmp_path) == "0000:9a:00.0"
    assert placement.pci_address_of_uuid("bbbb-2222", proc=tmp_path) == "0000:9a:00.0"
    assert placement.pci_address_of_uuid("GPU-cccc", proc=tmp_path) is None
    assert placement.pci_address_of_uuid("GPU-aaaa-1111", proc=tmp_path / "missing") is None


def test_a_gpu_worker_without_cuda_reports_no_cpus_and_is_left_alone():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    assert placement.local_cpus("cuda:0") is None
    assert placement.local_cpus(None) is None


@pytest.mark.parametrize("value, on", [(None, True), ("1", True), ("0", False), ("off", False), ("false", False)])
def test_sd_studio_pin_cpus_0_turns_placement_off(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv(placement.ENV, raising=False)
    else:
        monkeypatch.setenv(placement.ENV, value)
    assert placement.enabled() is on

"""Kernel paths a machine cannot run are skipped with a reason naming the path (engine_helpers, conftest)."""

from __future__ import annotations

from engine_helpers import ARCH_ISAS, ISA_NEEDS, every_isa, isa_skip_reason

from bitnet.inference import available_isas, cpu_features

AVX2_ONLY = {"arch": "x86_64", "avx2": True, "fma": True, "f16c": True}  # a Zen 2 / Haswell-class CPU


def test_every_isa_lists_what_runs_here_and_what_does_not():
    isas = every_isa()
    assert set(available_isas()) <= set(isas) and isas[0] == "ref"
    if cpu_features()["arch"] == "x86_64":
        assert {"avx2", "avx512", "amx"} <= set(isas)
    assert set(ISA_NEEDS) >= {i for names in ARCH_ISAS.values() for i in names}


def test_an_avx2_machine_skips_avx512_and_amx_naming_them():
    available = ["ref", "avx2"]
    assert isa_skip_reason("ref", AVX2_ONLY, available) is None
    assert isa_skip_reason("avx2", AVX2_ONLY, available) is None
    assert isa_skip_reason("avx512", AVX2_ONLY, available) == \
        "CPU lacks avx512 (no avx512f, avx512bw, avx512vl, avx512_vnni)"
    assert isa_skip_reason("amx", AVX2_ONLY, available).startswith("CPU lacks amx (no avx512f")
    assert isa_skip_reason("avxvnni", AVX2_ONLY, available) == "CPU lacks avxvnni (no avx_vnni)"


def test_a_cpu_with_the_features_but_not_the_build_says_so():
    sapphire = {**AVX2_ONLY, **{f: True for f in ISA_NEEDS["amx"]}}
    assert isa_skip_reason("amx", sapphire, ["ref", "avx2", "avx512"]).startswith("amx not usable: built with")
    assert isa_skip_reason("avx512", sapphire, ["ref", "avx2"]).startswith("this build of the engine has no avx512")

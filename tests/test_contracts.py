"""Every registered method's every variant keeps the library's contracts (see tests/contracts.py).

The list comes from the registry, so a new method is covered without
editing this file; a method that breaks a contract fails here.
"""

import contracts
import pytest

from keras_wsol.methods import METHODS

VARIANTS = [(cls, name) for cls in METHODS.values() for name in cls.variants(**contracts.ARCHITECTURE)]
IDS = [name for _, name in VARIANTS]
VARIANTS_BY_NAME = [(name, cls) for cls, name in VARIANTS]


def make(cls, name, deterministic=False):
    return cls.variants(deterministic=deterministic, **contracts.ARCHITECTURE)[name]


def test_the_registry_covers_every_method_and_stage():
    # A subset: a test may register a method of its own (tests/toy_method.py).
    assert {"cam", "cams2i", "complementary", "minmaxcam", "ornet", "ornet_refine"} <= set(METHODS)
    assert {"cam", "cams2i", "complementary", "minmaxcam", "ornet", "ornet_refine"} <= set(IDS)


@pytest.mark.parametrize("cls,name", VARIANTS, ids=IDS)
def test_short_fit_lowers_the_loss(cls, name):
    contracts.short_fit_lowers_the_loss(make(cls, name))


@pytest.mark.parametrize("cls,name", VARIANTS, ids=IDS)
def test_xla_compiles_unless_the_model_says_it_cannot(cls, name):
    contracts.xla_compiles_unless_declared_otherwise(make(cls, name))


def test_ornet_refinement_says_xla_cannot_compile_its_nearest_upsampling():
    refinement = dict(VARIANTS_BY_NAME)["ornet_refine"]
    assert not make(refinement, "ornet_refine")().supports_jit


@pytest.mark.parametrize("cls,name", VARIANTS, ids=IDS)
def test_save_and_load_round_trip(cls, name, tmp_path):
    contracts.save_load_round_trips(make(cls, name), tmp_path / f"{name}.keras")


@pytest.mark.parametrize("cls,name", VARIANTS, ids=IDS)
def test_mixed_precision_keeps_float32_losses(cls, name):
    contracts.mixed_precision_keeps_float32_losses(make(cls, name))


def test_two_replicas_match_one_device_for_every_variant():
    report = contracts.two_replicas_match_one_device("""
        from keras_wsol.methods import METHODS
        makers = {name: make for cls in METHODS.values()
                  for name, make in cls.variants(deterministic=True, **ARCHITECTURE).items()}
    """)
    assert set(report) == set(IDS)


@pytest.mark.parametrize("cls", list(METHODS.values()), ids=list(METHODS))
def test_the_train_step_benchmark_knows_every_variant(cls):
    contracts.benchmark_knows(cls)

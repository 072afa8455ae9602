"""The Python slave on its own (no FMU file, no native layer): pythonfmu's API, validation rules and
the exactness of the serialised state."""

from __future__ import annotations

import json
import math
import struct
from array import array
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmu.slave import STATE_FORMAT, BatchReactorTwin, read_config
from twin_core.errors import ParameterError
from twin_core.hybrid import HybridTwin
from twin_core.signals.twin import TWIN_SIGNALS


def _slave(**kw) -> BatchReactorTwin:
    return BatchReactorTwin(instance_name="py", resources=None, **kw)


def _vr(s: BatchReactorTwin, name: str) -> int:
    return s._vr[name]


def test_variables_registered_from_the_signal_table() -> None:
    s = _slave()
    assert [v.name for v in s.vars.values()] == [sig.name for sig in TWIN_SIGNALS]
    assert s.build_id == "dev" and not s.has_correction
    # without a bundled correction the start value of correction_on is false
    assert s.get_boolean([_vr(s, "correction_on")]) == [False]


def test_pythonfmu_api_steps_like_twin_core() -> None:
    s = _slave()
    s.setup_experiment(0.0)
    s.enter_initialization_mode()
    s.set_real([_vr(s, "T_jacket")], [340.0])
    s.exit_initialization_mode()
    twin = HybridTwin()
    ref = twin.initial_state()
    for i in range(5):
        assert s.do_step(60.0 * i, 60.0) is True
        ref = twin.step(ref, 60.0 * i, 60.0, 340.0)
    assert s.get_real([_vr(s, n) for n in ("c_A", "c_B", "c_C", "T")]) == list(ref.x)


@pytest.mark.parametrize(("name", "value", "why"), [
    ("T_jacket", math.nan, "finite"),
    ("T_jacket", 501.0, "outside"),
    ("c_A0", -1.0, "outside"),
    ("c_A", 10.0, "cannot be set"),
])
def test_python_setters_apply_the_native_rules(name: str, value: float, why: str) -> None:
    s = _slave()
    before = s.get_real([_vr(s, name)])
    with pytest.raises(ParameterError) as err:
        s.set_real([_vr(s, name)], [value])
    assert err.value.field == name and why in str(err.value)
    assert s.get_real([_vr(s, name)]) == before


def test_parameters_are_fixed_after_initialization() -> None:
    s = _slave()
    s.setup_experiment(0.0)
    s.enter_initialization_mode()
    s.exit_initialization_mode()
    with pytest.raises(ParameterError, match="cannot be set"):
        s.set_real([_vr(s, "k1_ref")], [2e-4])
    s.set_real([_vr(s, "T_jacket")], [300.0])  # inputs stay settable


doubles = st.floats(allow_nan=False, allow_infinity=True, width=64)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(doubles, min_size=4, max_size=4), h=st.floats(min_value=1e-9, max_value=1e4),
       t=st.floats(min_value=0.0, max_value=1e7))
def test_serialized_state_reads_back_bit_for_bit(values: list[float], h: float, t: float) -> None:
    s = _slave()
    s.setup_experiment(0.0)
    s.enter_initialization_mode()
    s.exit_initialization_mode()
    snap = s._fmi_get_state()
    snap = type(snap)(snap.real, snap.ints, t, 0.0, snap.rtol, (tuple(values), h, 1.1, 0.9, False),
                      snap.next_forecast, -math.inf, None)
    back = s.deserialize_state(s._fmi_serialize(snap))

    def bits(x: object) -> bytes:
        return json.dumps(x, default=repr).encode() if not isinstance(x, float) else struct.pack("<d", x)

    assert back.step is not None
    assert [bits(a) for a in back.step[0]] == [bits(a) for a in values]
    assert bits(back.step[1]) == bits(h) and bits(back.t) == bits(t)
    assert back == snap


@pytest.mark.parametrize(("mutate", "why"), [
    (lambda d: d.update(build="0123456789ab"), "another build"),
    (lambda d: d.update(version=99), "v1"),
    (lambda d: d.update(format="other"), STATE_FORMAT),
    (lambda d: d.pop("real"), "incomplete"),
])
def test_deserialize_refuses_what_is_not_a_state_of_this_build(mutate, why: str) -> None:  # noqa: ANN001
    s = _slave()
    doc = json.loads(s._fmi_serialize(s._fmi_get_state()))
    mutate(doc)
    with pytest.raises(ParameterError, match=why):
        s.deserialize_state(json.dumps(doc).encode())
    assert s._fmi_deserialize(b"{truncated") is None  # the FMI path logs and returns None
    assert "not a serialized state" in s.log_queue[-1].msg


def test_set_state_keeps_the_buffers_that_the_native_layer_points_into() -> None:
    s = _slave()
    real, ints = s._real, s._ints
    addr = (real.buffer_info()[0], ints.buffer_info()[0])
    snap = s._fmi_get_state()
    s._real[_vr(s, "T_jacket")] = 330.0
    assert s._fmi_set_state(snap) == 0
    assert s._real is real and s._ints is ints
    assert (real.buffer_info()[0], ints.buffer_info()[0]) == addr
    assert s._real[_vr(s, "T_jacket")] == 298.15
    assert isinstance(s._real, array)


def test_build_time_start_values_from_the_config(tmp_path: Path) -> None:
    (tmp_path / "batchtwin.cfg").write_text("# c\nbuild_id=abc\nstart.k1_ref=0.0003\nstart.T_jacket=330.5\n")
    assert read_config(tmp_path)["build_id"] == "abc"
    s = BatchReactorTwin(instance_name="py", resources=str(tmp_path))
    assert s.get_real([_vr(s, "k1_ref"), _vr(s, "T_jacket")]) == [0.0003, 330.5]
    (tmp_path / "batchtwin.cfg").write_text("start.T0=900\n")
    with pytest.raises(ParameterError, match="T0"):
        BatchReactorTwin(instance_name="py", resources=str(tmp_path))

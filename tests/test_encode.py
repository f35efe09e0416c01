"""The shared conventions: quantization, flow member layout, FlowStack, metadata checks."""
import numpy as np
import pytest

from pipeline import encode
from pipeline.flow.config import FlowConfig, params_from_dict
from pipeline.flow.quantize import DEFAULT_BOUND, dequantize, quantize


def test_zero_motion_is_128_and_ends_clip():
    q = quantize(np.array([0.0, -20.0, 20.0, -100.0, 100.0]), 20.0)
    assert q.tolist() == [128, 0, 255, 0, 255]


def test_round_trip_within_half_a_level():
    d = np.linspace(-19.99, 19.99, 10001).astype(np.float32)
    back = dequantize(quantize(d, DEFAULT_BOUND), DEFAULT_BOUND)
    step = 2 * DEFAULT_BOUND / 255
    assert np.abs(back - d).max() <= step / 2 + 1e-5


def test_quantize_rounds_instead_of_truncating():
    step = 40 / 255
    # 0.6 of a level above level 200 must round up to 201 (truncation would give 200).
    d = 201 * step - 20 - 0.4 * step
    assert quantize(np.array([d]), 20.0)[0] == 201


def test_flow_member_is_x_over_y_and_decodes_alone():
    rng = np.random.default_rng(0)
    flow = np.stack([np.full((24, 32), 3.0), np.full((24, 32), -5.0)], -1).astype(np.float32)
    flow += rng.normal(0, 0.01, flow.shape).astype(np.float32)
    data = encode.encode_flow(flow, 20.0, quality=95)
    back = encode.decode_flow(data, 20.0)
    assert back.shape == (24, 32, 2)
    assert np.abs(back - flow).mean() < 0.2
    assert back[..., 0].mean() == pytest.approx(3.0, abs=0.2) and back[..., 1].mean() == pytest.approx(-5.0, abs=0.2)


def test_flow_stack_round_trip_and_selection():
    fields = [bytes([i]) * (i + 3) for i in range(5)]
    packed = encode.pack_stack(fields)
    assert encode.unpack_stack(packed) == fields
    assert encode.unpack_stack(packed, [3, 1]) == [fields[3], fields[1]]
    with pytest.raises(encode.SchemaError, match="truncated"):
        encode.unpack_stack(packed[:-1])
    with pytest.raises(encode.SchemaError, match="magic"):
        encode.unpack_stack(b"XXXX" + packed[4:])


def test_unknown_schema_version_is_refused():
    with pytest.raises(encode.SchemaError, match="unknown schema version 99"):
        encode.load_meta(b'{"schema_version": 99}', "s1")


@pytest.mark.parametrize("key", ["a/b", "..", "a.b", "", "x y", "-" * 0])
def test_unsafe_keys_are_refused(key):
    with pytest.raises(encode.SchemaError):
        encode.check_key(key)


def test_from_sample_checks_member_counts():
    meta = {"schema_version": 1, "size": [8, 8], "frames": [{"index": 0, "pts": 0.0}], "flow_fields": [],
            "flow": {"bound": 20.0}}
    frame = encode.encode_rgb(np.zeros((8, 8, 3), np.uint8))
    sample = encode.to_sample("k", meta, [frame], [])
    assert encode.from_sample(sample).frames.shape == (1, 8, 8, 3)
    del sample[encode.rgb_member(0)]
    with pytest.raises(encode.SchemaError, match="do not match"):
        encode.from_sample(sample, "k")


def test_flow_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="'pwc'"):
        FlowConfig(algorithm="pwc")
    with pytest.raises(ValueError, match="torch backend implements"):
        FlowConfig(algorithm="dis", backend="torch")
    with pytest.raises(ValueError, match="opencv backend implements"):
        FlowConfig(algorithm="raft_small")
    with pytest.raises(ValueError, match="unknown tvl1 parameter"):
        params_from_dict("tvl1", {"warpz": 3})
    assert params_from_dict("tvl1", {"lambda": 0.1, "warps": 3}).lambda_ == 0.1


def test_fused_flow_encoder_gives_the_bytes_of_quantize_then_encode():
    from pipeline.flow.quantize import quantize_inplace

    flow = (np.random.default_rng(3).normal(0, 8, (30, 44, 2))).astype(np.float32)
    flow[0, :4, 0] = [-20.0, 20.0, 127.5 * 40 / 255 - 20, 1e6]  # ends, a rounding tie, beyond the bound
    assert encode.encode_flow(flow, 20.0, 95) == encode.encode_flow_q(quantize(flow, 20.0), 95)
    values = flow.copy()
    np.testing.assert_array_equal(quantize_inplace(values, 20.0), quantize(flow, 20.0))
    with pytest.raises(ValueError, match="float32"):
        quantize_inplace(flow.astype(np.float64), 20.0)


def test_frames_encode_from_planes_like_rgb():
    """JPEG from the decoder's YUV planes decodes to the picture the planes show."""
    import cv2

    from pipeline.decode import planes_to_rgb, split_planes

    rgb = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    rgb = cv2.resize(cv2.resize(rgb, (8, 6)), (16, 12), interpolation=cv2.INTER_CUBIC)  # smooth
    ycrcb = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    chroma = [cv2.resize(ycrcb[..., c], (8, 6), interpolation=cv2.INTER_AREA) for c in (2, 1)]
    i420 = np.concatenate([ycrcb[..., 0], chroma[0].reshape(3, 16), chroma[1].reshape(3, 16)])
    data = encode.encode_planes(*split_planes(i420), quality=95)
    back = encode.decode_rgb(data)
    assert back.shape == (12, 16, 3)
    truth = planes_to_rgb(i420).astype(int)
    assert np.abs(back - truth).mean() < 3
    # No worse than converting to RGB and encoding that (which resamples chroma twice).
    via_rgb = encode.decode_rgb(encode.encode_rgb(planes_to_rgb(i420), quality=95))
    assert np.abs(back - truth).mean() <= np.abs(via_rgb - truth).mean()

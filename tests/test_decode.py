"""Decode stage: probe, streaming frames with timestamps, chunks. Real tiny files, real ffmpeg."""
from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.synthetic import motion as synthetic
from pipeline.decode import (DecodeConfig, DecodeError, _read_exact, build_command, ffmpeg_version, iter_chunks,
                             iter_frames, parse_banner, probe, resolve_ffmpeg)

W, H, N = 64, 48, 12


def _frames(n=N, width=W, height=H, motion="right"):
    return list(synthetic.moving_frames(motion, n, height, width, speed=2.0, seed=1))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _decode(path, **cfg):
    rows = list(iter_frames(str(path), DecodeConfig(**cfg)))
    return [f for f, _ in rows], [p for _, p in rows]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Tiny test videos written once for the module."""
    d = tmp_path_factory.mktemp("decode_media")
    src = _frames()
    files = {
        "src": src,
        "mp4": synthetic.write_video(d / "clip.mp4", src),
        "avi": synthetic.write_video(d / "clip.avi", src, codec="mpeg4", pix_fmt="yuv420p"),
        # Lossless RGB (ffv1 in planar GBR): decoded pixels must equal the source exactly.
        "ffv1": synthetic.write_video(d / "clip_ffv1.mkv", src, codec="ffv1", pix_fmt="gbrp"),
        "x264_lossless": synthetic.write_video(d / "clip_crf0.mp4", src, quality="0", pix_fmt="yuv444p"),
    }
    files["audio_first"] = synthetic.write_audio_first(d / "audio_first.mp4", files["mp4"])
    files["audio_only"] = synthetic.write_audio_only(d / "audio_only.m4a")
    files["rotated"] = synthetic.write_rotated(d / "rotated.mkv", files["ffv1"], 90)
    return files


# --------------------------------------------------------------------------- config


def test_output_size_rules():
    assert DecodeConfig(resize="none").output_size(64, 48) == (64, 48)
    assert DecodeConfig(resize="none").output_size(63, 47) == (64, 48)  # odd -> even
    assert DecodeConfig(resize="short:32").output_size(64, 48) == (42, 32)  # 42.67 -> 42
    assert DecodeConfig(resize="short:32").output_size(48, 64) == (32, 42)
    assert DecodeConfig(resize="short:256").output_size(320, 240) == (342, 256)
    assert DecodeConfig(resize="340x256").output_size(64, 48) == (340, 256)
    assert DecodeConfig(resize="short:2").output_size(1000, 10) == (200, 2)
    assert DecodeConfig(resize="short:2").output_size(10, 1000) == (2, 200)
    assert DecodeConfig(resize="short:4").output_size(1, 1000) == (4, 4000)
    assert min(DecodeConfig(resize="short:2").output_size(2, 1)) >= 2


@pytest.mark.parametrize("kwargs, bad", [({"resize": "short:"}, "short:"), ({"resize": "256"}, "256"),
                                          ({"resize": "0x10"}, "0x10"), ({"resize": "big"}, "big"),
                                          ({"fps": 0}, "0"), ({"fps": -5.0}, "-5.0"),
                                          ({"fps": float("nan")}, "nan"), ({"fps": "25"}, "25"),
                                          ({"threads": -1}, "threads=-1")])
def test_config_rejects_bad_values(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        DecodeConfig(**kwargs)


def test_output_dict_changes_with_settings():
    a, b = DecodeConfig(), DecodeConfig(fps=10)
    assert a.output_dict() != b.output_dict()
    assert a.output_dict() == DecodeConfig(resize="short:256").output_dict()
    assert b.output_dict()["fps"] == 10.0


def test_command_maps_first_video_stream_and_keeps_timing():
    argv = build_command("/data/v.mp4", (42, 32), DecodeConfig(fps=10, threads=2)).compile(cmd=resolve_ffmpeg())
    graph = argv[argv.index("-filter_complex") + 1]
    assert graph.startswith("[0:V:0]fps=fps=10") and "scale=42:32:flags=area" in graph
    assert graph.split(";")[-1].startswith("[s1]showinfo")  # timestamps of the frames actually output
    assert argv[argv.index("-threads") + 1] == "2" and "-i" in argv and "pipe:" in argv
    timing = ["-fps_mode", "passthrough"] if ffmpeg_version() >= (5, 1) else ["-vsync", "0"]
    assert any(argv[i:i + 2] == timing for i in range(len(argv)))


# --------------------------------------------------------------------------- probe


def test_probe_mp4_h264(media):
    info = probe(str(media["mp4"]))
    assert (info.width, info.height, info.stream_index, info.codec) == (W, H, 0, "h264")
    assert info.fps == pytest.approx(25.0)
    assert info.duration == pytest.approx(N / 25.0, abs=0.05)
    assert info.est_frames == N


def test_probe_avi_mpeg4(media):
    info = probe(str(media["avi"]))
    assert (info.width, info.height, info.stream_index, info.codec) == (W, H, 0, "mpeg4")
    assert info.fps == pytest.approx(25.0)
    assert info.duration == pytest.approx(N / 25.0, abs=0.05)


def test_audio_first_file_probes_and_decodes(media):
    info = probe(str(media["audio_first"]))
    assert info.stream_index == 1 and (info.width, info.height) == (W, H)
    frames, pts = _decode(media["audio_first"], resize="none")
    assert len(frames) == N and frames[0].shape == (H, W, 3)
    assert _psnr(np.stack(frames), np.stack(media["src"])) > 30


def test_probe_skips_cover_art():
    banner = """Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'x.mp4':
  Duration: 00:00:01.50, start: 0.000000, bitrate: 43 kb/s
  Stream #0:0[0x0]: Video: mjpeg (Baseline), yuvj420p(pc, bt470bg/unknown/unknown), 600x600 [SAR 1:1 DAR 1:1], 90k tbr, 90k tbn (attached pic)
  Stream #0:1[0x1](und): Audio: aac (LC) (mp4a / 0x6134706D), 44100 Hz, stereo, fltp, 128 kb/s (default)
  Stream #0:2[0x2](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(progressive), 320x240 [SAR 2:1 DAR 8:3], 29.97 fps, 29.97 tbr, 30k tbn (default)
    Side data:
      displaymatrix: rotation of -90.00 degrees
At least one output file must be specified
"""
    info = parse_banner("x.mp4", banner)
    assert (info.stream_index, info.codec, info.rotation) == (2, "h264", -90)
    assert (info.width, info.height) == (240, 640)  # SAR 2:1 widens to 640, rotation swaps
    assert info.fps == pytest.approx(29.97) and info.duration == pytest.approx(1.5)


def test_probe_non_square_pixels(tmp_path):
    path = synthetic.write_video(tmp_path / "sar.mp4", _frames(4), extra_args=("-vf", "setsar=4/3"))
    info = probe(str(path))
    assert (info.width, info.height) == (85, 48)  # 64 * 4/3, height kept
    frames, _ = _decode(path, resize="none")
    assert frames[0].shape == (48, 86, 3)


def test_rotation_swaps_size_and_frames_are_upright(media):
    info = probe(str(media["rotated"]))
    assert abs(info.rotation) == 90 and (info.width, info.height) == (H, W)
    frames, _ = _decode(media["rotated"], resize="none")
    assert frames[0].shape == (W, H, 3)
    # 90 degrees counter-clockwise display rotation, applied by ffmpeg's autorotate.
    np.testing.assert_array_equal(frames[0], np.rot90(media["src"][0], 1))


def test_odd_input_size_gives_even_output(tmp_path):
    path = synthetic.write_video(tmp_path / "odd.mkv", _frames(3, 63, 47), codec="ffv1", pix_fmt="gbrp")
    info = probe(str(path))
    assert (info.width, info.height) == (63, 47)
    for resize, shape in (("none", (48, 64, 3)), ("short:31", (32, 42, 3))):
        frames, _ = _decode(path, resize=resize)
        assert len(frames) == 3 and frames[0].shape == shape


# --------------------------------------------------------------------------- errors


def _bad_files(tmp_path, media):
    zero = tmp_path / "zero.mp4"
    zero.write_bytes(b"")
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return {"audio_only": (media["audio_only"], "no video stream"), "zero": (zero, "empty file"),
            "noise": (noise, "not a media file"), "missing": (tmp_path / "missing.mp4", "file not found")}


@pytest.mark.parametrize("kind", ["audio_only", "zero", "noise", "missing"])
def test_bad_files_raise_decode_error_naming_the_file(tmp_path, media, kind):
    path, reason = _bad_files(tmp_path, media)[kind]
    with pytest.raises(DecodeError, match=reason) as err:
        probe(str(path))
    assert str(path) in str(err.value)
    with pytest.raises(DecodeError) as err:
        list(iter_frames(str(path), DecodeConfig()))
    assert str(path) in str(err.value)


def test_decode_failure_after_probe_names_the_file(tmp_path, media):
    # A stale probe result for a file that is not a video: ffmpeg's own error must surface.
    noise = tmp_path / "noise.avi"
    noise.write_bytes(b"\x00\x01" * 2048)
    info = probe(str(media["mp4"]))
    with pytest.raises(DecodeError, match="Invalid data") as err:
        list(iter_frames(str(noise), DecodeConfig(), info))
    assert str(noise) in str(err.value)


def test_uri_forms(media):
    frames, _ = _decode(Path(media["mp4"]).as_uri(), resize="none")
    assert len(frames) == N
    # Remote URLs (s3://, ...) are decoded from a local copy (tests/test_s3.py); a scheme no
    # filesystem knows is refused, naming the URI.
    with pytest.raises(DecodeError, match="nosuch://bucket/x.mp4: unknown URI scheme"):
        probe("nosuch://bucket/x.mp4")


def test_a_failed_open_reports_the_line_that_names_the_cause():
    banner = ("[IMGUTILS @ 0x7ffe81fbe2b0] Picture size 30000x30000 is invalid\n"
              "[in#0 @ 0x55ed65f6ed00] Error opening input: Device or resource busy\n"
              "Error opening input file /tmp/huge.avi.\n"
              "Error opening input files: Device or resource busy\n")
    with pytest.raises(DecodeError, match="Picture size 30000x30000 is invalid") as err:
        parse_banner("huge.avi", banner)
    assert "0x7ffe" not in str(err.value)  # addresses differ per run: error rows would too


def test_partial_trailing_frame_is_dropped():
    pipe = io.BufferedReader(io.BytesIO(b"x" * 10))
    assert _read_exact(pipe, 4, "f") == bytearray(b"xxxx")
    assert _read_exact(pipe, 4, "f") == bytearray(b"xxxx")
    assert _read_exact(pipe, 4, "f") is None  # 2 bytes left: not a frame


# --------------------------------------------------------------------------- frames


@pytest.mark.parametrize("resize, shape", [("short:32", (32, 42, 3)), ("80x60", (60, 80, 3)), ("none", (H, W, 3))])
def test_resize_shapes(media, resize, shape):
    frames, _ = _decode(media["mp4"], resize=resize)
    assert len(frames) == N and all(f.shape == shape and f.dtype == np.uint8 for f in frames)


def test_timestamps_of_25fps_video(media):
    _, pts = _decode(media["mp4"], resize="none")
    assert pts == pytest.approx([i * 0.04 for i in range(N)], abs=1e-6)


def test_fps_resampling(media):
    frames, pts = _decode(media["mp4"], resize="none", fps=10)
    assert len(frames) == 5  # 0.48 s at 10 fps: 0.0 .. 0.4
    assert pts == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4], abs=1e-6)
    frames, pts = _decode(media["mp4"], resize="none", fps=50)
    assert len(frames) == 2 * N and pts == pytest.approx([i * 0.02 for i in range(2 * N)], abs=1e-6)


def test_variable_frame_rate_passthrough(tmp_path):
    times = [0.0, 0.04, 0.08, 0.2, 0.3, 0.5, 0.52, 0.9]
    path = synthetic.write_vfr_video(tmp_path / "vfr.mkv", _frames(len(times)), times)
    frames, pts = _decode(path, resize="none")
    assert len(frames) == len(times)  # neither duplicated nor dropped
    assert pts == pytest.approx(times, abs=1e-6)


@pytest.mark.parametrize("kind, min_psnr", [("ffv1", float("inf")), ("x264_lossless", 30.0)])
def test_pixels_match_source_in_rgb_order(media, kind, min_psnr):
    frames, _ = _decode(media[kind], resize="none")
    got, want = np.stack(frames), np.stack(media["src"])
    assert _psnr(got, want) >= min_psnr
    assert _psnr(got[..., ::-1], want) < 20  # BGR order would fail: the check sees channel order


def test_early_close_reaps_ffmpeg(media):
    gen = iter_frames(str(media["mp4"]), DecodeConfig(resize="none"))
    next(gen)
    assert _ffmpeg_children(), "ffmpeg should be running while frames are pending"
    gen.close()
    assert _ffmpeg_children() == []


def _ffmpeg_children() -> list[int]:
    """Child processes (zombies included) of this process whose command name is ffmpeg."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # the process ended while we looked
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == os.getpid() and comm.startswith("ffmpeg"):
            found.append(int(entry))
    return found


# --------------------------------------------------------------------------- chunks


@pytest.mark.parametrize("chunk_frames, overlap", [(5, 2), (4, 0), (5, 3), (3, 5), (12, 1), (20, 2), (1, 1)])
def test_chunks_cover_every_frame_once(media, chunk_frames, overlap):
    cfg = DecodeConfig(resize="none")
    frames, pts = _decode(media["mp4"], resize="none")
    chunks = list(iter_chunks("clip", str(media["mp4"]), cfg, chunk_frames=chunk_frames, overlap=overlap))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert len(chunks) == -(-N // chunk_frames)
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    owned = [c.start + i for c in chunks for i in range(c.owned)]
    assert owned == list(range(N))  # every frame owned exactly once, in order
    for c in chunks:
        assert c.video_key == "clip" and len(c.pts) == len(c.frames)
        end = min(N, c.start + c.owned + (0 if c.last else overlap))
        assert len(c.frames) == end - c.start  # full look-ahead unless the video ends first
        np.testing.assert_array_equal(c.frames, np.stack(frames[c.start:end]))
        assert list(c.pts) == pts[c.start:end]
    for a, b in zip(chunks, chunks[1:]):  # look-ahead rows are the next chunk's first frames
        look = a.frames[a.owned:]
        np.testing.assert_array_equal(look, b.frames[:len(look)])
    assert chunks[-1].owned == N - chunk_frames * (len(chunks) - 1)


def test_short_video_gives_one_chunk(media):
    chunks = list(iter_chunks("k", str(media["mp4"]), DecodeConfig(), chunk_frames=100, overlap=4))
    assert len(chunks) == 1 and chunks[0].owned == N and chunks[0].last and chunks[0].frames.shape[0] == N


@pytest.mark.parametrize("kwargs, bad", [({"chunk_frames": 0, "overlap": 1}, "chunk_frames=0"),
                                          ({"chunk_frames": 4, "overlap": -1}, "overlap=-1"),
                                          ({"chunk_frames": 2.5, "overlap": 1}, "chunk_frames=2.5")])
def test_chunk_arguments_validated(media, kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        next(iter_chunks("k", str(media["mp4"]), DecodeConfig(), **kwargs))


def test_truncated_file_yields_the_frames_it_has(tmp_path):
    full = synthetic.write_video(tmp_path / "full.mkv", _frames(30), extra_args=("-g", "5"))
    data = full.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 7 // 10])
    info = probe(str(cut))
    assert info.est_frames == 30  # the header still claims the full length
    frames, pts = _decode(cut, resize="none")
    assert 0 < len(frames) < 30 and len(pts) == len(frames)
    assert pts == pytest.approx([i * 0.04 for i in range(len(frames))], abs=1e-6)


# --------------------------------------------------------------------------- planes (the build's frames)


def test_planes_are_jpeg_colour_space_of_the_source(media):
    """iter_planes gives full-range BT.601 I420: luma equals the source's grey (what flow takes)
    and planes_to_rgb gives back its RGB up to 4:2:0 chroma."""
    from pipeline.decode import iter_planes, planes_to_rgb, split_planes

    rows = list(iter_planes(str(media["ffv1"]), DecodeConfig(resize="none")))
    assert len(rows) == N and rows[0][0].shape == (H * 3 // 2, W) and rows[0][0].dtype == np.uint8
    assert [p for _, p in rows] == _decode(media["ffv1"], resize="none")[1]
    y, u, v = split_planes(rows[0][0])
    assert y.shape == (H, W) and u.shape == v.shape == (H // 2, W // 2)
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in media["src"]])
    luma = np.stack([split_planes(f)[0] for f, _ in rows])
    assert np.abs(luma.astype(int) - grey).max() <= 1  # full range: no 16..235 squeeze
    rgb = np.stack([planes_to_rgb(f) for f, _ in rows])
    assert _psnr(rgb, np.stack(media["src"])) > 28
    assert _psnr(rgb[..., ::-1], np.stack(media["src"])) < 20


def test_planes_use_jfif_matrix_whatever_the_source_matrix(tmp_path):
    """A BT.709-tagged video still gives BT.601 luma (JPEG's), as the RGB path would."""
    from pipeline.decode import iter_planes, split_planes

    src = _frames(4)
    path = synthetic.write_video(tmp_path / "hd.mp4", src, quality="0", pix_fmt="yuv444p", extra_args=(
        "-vf", "scale=out_color_matrix=bt709", "-colorspace", "bt709", "-color_primaries", "bt709",
        "-color_trc", "bt709"))
    luma = np.stack([split_planes(f)[0] for f, _ in iter_planes(str(path), DecodeConfig(resize="none"))])
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in src])
    assert abs(float(luma.mean()) - float(grey.mean())) < 0.5 and _psnr(luma, grey) > 40


def test_plane_command_converts_in_the_scaler(media):
    args = build_command("in.mp4", (64, 48), DecodeConfig(), "yuv420p").compile(cmd="ffmpeg")
    chain = args[args.index("-filter_complex") + 1]
    assert "out_range=full" in chain and "out_color_matrix=bt601" in chain and "accurate_rnd" not in chain
    assert args[args.index("-pix_fmt") + 1] == "yuv420p"
    with pytest.raises(ValueError, match="pix_fmt"):
        build_command("in.mp4", (64, 48), DecodeConfig(), "gray")

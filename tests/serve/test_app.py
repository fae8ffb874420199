"""The web API on a real bundle: same P(FAKE) as predict, refusals with reasons, limits, no leftovers."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dfdc.config import ServeConfig
from dfdc.release.bundle import Bundle, load_bundle
from dfdc.release.predict import list_videos, score_videos
from dfdc.serve.app import create_app
from dfdc.serve.upload import ServeError, receive_file

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Demo

    from dfdc.audio.model import VoiceCheckpoint
    from dfdc.model.backbone import Checkpoint


@pytest.fixture(scope="module")
def bundle(serve_bundle_dir: Path) -> Bundle:
    return load_bundle(serve_bundle_dir)


@pytest.fixture(scope="module")
def app(serve_bundle_dir: Path, bundle: Bundle) -> FastAPI:
    return create_app(serve_bundle_dir, ServeConfig(queue=1), bundle)


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:  # runs the lifespan: the private upload folder
        yield client


@pytest.fixture(scope="module")
def videos(demo: Demo) -> list[Path]:
    return list_videos(demo.test_dir)


def _post(client: TestClient, path: Path, name: str | None = None) -> dict:
    with path.open("rb") as f:
        response = client.post("/api/score", files={"file": (name or path.name, f, "video/mp4")})
    return {"code": response.status_code, "json": response.json(), "headers": response.headers}


def test_healthz(client: TestClient, app: FastAPI) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["admitted"] == 0 and body["capacity"] == 2
    assert body["model"] == client.get("/api/model").json()["version"]


def test_page_and_docs(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text and "not proof" in page.text
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/api/score"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["required"] == ["file"]


def test_score_equals_score_videos(client: TestClient, bundle: Bundle, videos: list[Path]) -> None:
    expected = score_videos(bundle, videos, progress=False)
    for path, row in zip(videos, expected.to_dict("records"), strict=True):
        answer = _post(client, path)
        assert answer["code"] == 200, answer["json"]
        body = answer["json"]
        assert body["filename"] == path.name
        assert body["label"] == pytest.approx(row["label"], abs=1e-6)
        assert (body["status"], body["detail"]) == (row["status"], row["detail"])
        assert {"filename", "label", "status", "detail", "persons", "model"} <= set(body)
        assert body["model"]["name"] == "resnet10t" and "# dfdc detector" in body["model"]["card"]
        assert body["persons"], "the demo videos show faces"
        person = body["persons"][0]
        assert person["thumbnail"].startswith("data:image/png;base64,")
        assert person["frames"] and all(0 <= f["label"] <= 1 for f in person["frames"])
        labels = sorted((f["label"] for p in body["persons"] for f in p["frames"]), reverse=True)
        assert [f["label"] for f in body["suspicious_frames"]] == labels[:3]
        assert "not proof" in " ".join(body["reading"]["not_meant"])


def test_client_file_name_is_only_a_label(client: TestClient, videos: list[Path], app: FastAPI) -> None:
    answer = _post(client, videos[0], name="../../etc/passwd.mp4")
    assert answer["code"] == 200 and answer["json"]["filename"] == "passwd.mp4"


def test_text_renamed_mp4_is_refused(client: TestClient, tmp_path: Path) -> None:
    fake = tmp_path / "clip.mp4"
    fake.write_text("this is not a video, only text with a video's name\n" * 20)
    answer = _post(client, fake)
    assert answer["code"] == 415
    assert answer["json"]["error"] == "not_a_video" and answer["json"]["detail"]
    assert "upload" not in answer["json"]["detail"]  # no server-side file named in the answer


def test_audio_only_is_refused(client: TestClient, tmp_path: Path, audio_only_mp4: Callable) -> None:
    answer = _post(client, audio_only_mp4(tmp_path / "voice.mp4"))
    assert (answer["code"], answer["json"]["error"]) == (415, "no_video_stream")


def test_faceless_video_gets_the_fallback_and_says_why(
    client: TestClient, tmp_path: Path, faceless_mp4: Callable
) -> None:
    body = _post(client, faceless_mp4(tmp_path / "grey.mp4"))["json"]
    assert body["status"] == "no_face" and body["persons"] == []
    assert body["reading"]["verdict"].startswith("No verdict")


def test_missing_file_field(client: TestClient) -> None:
    response = client.post("/api/score", files={"video": ("a.mp4", b"x", "video/mp4")})
    assert (response.status_code, response.json()["error"]) == (422, "no_file")


def test_upload_over_the_limit_gets_413(serve_bundle_dir: Path, bundle: Bundle, videos: list[Path]) -> None:
    small = create_app(serve_bundle_dir, ServeConfig(max_upload_bytes=1000), bundle)
    with TestClient(small) as client:
        answer = _post(client, videos[0])
        assert (answer["code"], answer["json"]["error"]) == (413, "too_large")
        assert not list(small.state.upload_dir.iterdir())


def test_video_over_the_duration_gets_413(serve_bundle_dir: Path, bundle: Bundle, videos: list[Path]) -> None:
    short = create_app(serve_bundle_dir, ServeConfig(max_duration_s=0.5), bundle)
    with TestClient(short) as client:
        answer = _post(client, videos[0])
    assert (answer["code"], answer["json"]["error"]) == (413, "too_long")


def test_limit_is_counted_while_streaming(tmp_path: Path) -> None:
    """No Content-Length: the upload stops at the first chunk past the limit, the rest is never read."""
    boundary = "b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="v.mp4"\r\n\r\n'.encode()
    read = []

    async def body() -> AsyncIterator[bytes]:
        for chunk in [head, *[b"x" * 1000] * 50]:
            read.append(chunk)
            yield chunk

    dest = tmp_path / "upload"
    with pytest.raises(ServeError) as info:
        asyncio.run(receive_file(f"multipart/form-data; boundary={boundary}", None, body(), dest, 2500))
    assert info.value.status == 413
    assert len(read) == 4  # the head and three chunks: 3000 bytes > 2500
    assert dest.stat().st_size <= 2500


def test_upload_folder_is_private_and_empty_after_requests(client: TestClient, app: FastAPI) -> None:
    folder = app.state.upload_dir  # requests above: scored, refused, fallback
    assert folder.is_dir() and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert list(folder.iterdir()) == []


def test_busy_gets_503(client: TestClient, app: FastAPI, videos: list[Path]) -> None:
    gate = app.state.gate
    gate.admitted = gate.capacity  # one scoring and a full queue
    try:
        answer = _post(client, videos[0])
    finally:
        gate.admitted = 0
    assert (answer["code"], answer["json"]["error"]) == (503, "busy")
    assert answer["headers"]["retry-after"] == "60"
    assert _post(client, videos[0])["code"] == 200


def test_report_is_one_self_contained_file(client: TestClient, videos: list[Path]) -> None:
    result = _post(client, videos[0])["json"]
    response = client.post("/api/report", json=result)
    assert response.status_code == 200
    assert response.headers["content-disposition"].startswith('attachment; filename="deepfake-report-')
    html = response.text
    assert f"P(FAKE) = {result['label']:.3f}" in html and "not proof" in html
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert "data:image/png;base64," in html and "<svg" in html and "Model card" in html


def test_report_refuses_a_foreign_image(client: TestClient, videos: list[Path]) -> None:
    result = _post(client, videos[0])["json"]
    result["persons"][0]["thumbnail"] = "https://example.org/x.png"
    assert client.post("/api/report", json=result).status_code == 422


def test_cli_refuses_a_bad_bundle(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app as cli

    result = CliRunner().invoke(cli, ["serve", "--model", str(tmp_path / "nothing"), "--params", "none.yaml"])
    assert result.exit_code == 2 and "not a dfdc bundle" in result.output


def test_a_voice_bundle_shows_the_voice_per_window(
    untrained_checkpoint: Checkpoint, untrained_voice: VoiceCheckpoint, videos: list[Path], tmp_path: Path
) -> None:
    """With a voice branch the page says so and lists each audio window's score; a face-only one does not."""
    from dfdc.release.bundle import build_bundle
    from dfdc.scoring.calibrate import Calibration
    from dfdc.scoring.fusion import Fusion

    fused = Calibration(2.0, 0.05, 0.95, 0.5, fusion=Fusion("noisy_or").to_json())
    bundle_dir = build_bundle(
        untrained_checkpoint, fused, {"logloss": 0.6}, tmp_path / "b", voice=untrained_voice
    )
    bundle = load_bundle(bundle_dir)
    with TestClient(create_app(bundle_dir, ServeConfig(queue=1), bundle)) as voice_client:
        body = _post(voice_client, videos[0])["json"]
        html = voice_client.post("/api/report", json=body).text
    expected = score_videos(bundle, videos[:1], progress=False, details=True).iloc[0]
    assert body["label"] == pytest.approx(expected["label"], abs=1e-6)
    assert body["voice"]["status"] == "ok"
    assert [w["label"] for w in body["voice"]["windows"]] == pytest.approx(
        [w["label"] for w in expected["details"]["voice"]]
    )
    assert "face or voice" in body["reading"]["not_meant"][0]
    assert 'id="voice-windows"' in html and "P(FAKE) of the voice" in html


def test_a_face_only_bundle_has_no_voice_section(client: TestClient, videos: list[Path]) -> None:
    body = _post(client, videos[0])["json"]
    assert body["voice"] is None and "face or voice" not in " ".join(body["reading"]["not_meant"])
    assert 'id="voice"' not in client.post("/api/report", json=body).text

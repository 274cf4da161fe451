"""Installing, listing and removing backends, with galleries and archives served on 127.0.0.1."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import orjson
import pytest

from runner.backends import BackendError, Backends
from runner.download import DownloadOptions, client_for
from runner.gallery import GalleryEntry, GalleryError, parse, read_galleries
from tests.fakes.registry import FakeRegistry, Fault

FAST = DownloadOptions(stall_timeout=1.0, retries=1, backoff=0.01)
RUN_SH = "#!/bin/sh\nexec echo started \"$@\"\n"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def build(tmp_path: Path) -> Path:
    """A backend directory, as a user would have it before packing it."""
    root = tmp_path / "src" / "mine"
    root.mkdir(parents=True)
    (root / "run.sh").write_text(RUN_SH)
    (root / "README").write_text("my build")
    return root


def _tarball(source: Path, path: Path, top: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for child in source.iterdir():
            tar.add(child, arcname=f"{top}{child.name}")
    return path


@pytest.fixture
def backends(tmp_path: Path) -> Backends:
    system = tmp_path / "system"
    (system / "vendor-llama").mkdir(parents=True)
    (system / "vendor-llama" / "llama-server").write_text("#!/bin/sh\n")
    return Backends(tmp_path / "home" / "backends", system,
                    embedded=lambda: {"cpu": tmp_path / "payloads" / "cpu" / "llama-server.gz"},
                    options=FAST)


def _entry(**fields: object) -> GalleryEntry:
    return GalleryEntry.model_validate({"name": "mine", **fields})


def _left_behind(backends: Backends) -> list[str]:
    """Everything in the backends dir but the download cache."""
    if not backends.root.exists():
        return []
    return sorted(p.name for p in backends.root.iterdir() if p.name != ".downloads")


async def test_install_from_a_directory_next_to_the_gallery(
    tmp_path: Path, backends: Backends, build: Path
) -> None:
    gallery = tmp_path / "src" / "gallery.yaml"
    gallery.write_text("- {name: mine, alias: my-build, uri: mine, description: mine}\n")
    entries = parse(gallery.read_text(), str(gallery))
    installed = await backends.install(entries, "mine", "default")
    assert installed.run == backends.root / "mine" / "run.sh"
    assert installed.run.stat().st_mode & 0o111
    metadata = orjson.loads((backends.root / "mine" / "metadata.json").read_bytes())
    assert metadata["name"] == "mine" and metadata["alias"] == "my-build"
    assert metadata["meta_backend_for"] is None and metadata["gallery_url"] == str(gallery)
    assert metadata["installed_at"].startswith("20")
    assert backends.get("my-build") == installed
    assert _left_behind(backends) == ["mine"]


async def test_install_from_an_archive_url_with_a_good_sha256(
    tmp_path: Path, backends: Backends, build: Path, registry: FakeRegistry
) -> None:
    archive = _tarball(build, tmp_path / "mine.tar.gz", top="mine-1.0/")
    url = registry.add_file("mine.tar.gz", archive)
    installed = await backends.install([_entry(uri=url, sha256=_sha(archive))], "mine", "default")
    assert installed.run == backends.root / "mine" / "mine-1.0" / "run.sh"
    assert installed.metadata["sha256"] == _sha(archive)
    assert _left_behind(backends) == ["mine"]


async def test_mirrors_are_tried_in_order_after_the_uri_fails(
    tmp_path: Path, backends: Backends, build: Path, registry: FakeRegistry
) -> None:
    archive = _tarball(build, tmp_path / "mine.tar.gz")
    good = registry.add_file("mine.tar.gz", archive)
    registry.add_file("flaky.tar.gz", archive)
    registry.faults.append(Fault("status", times=100, status=503, path="/files/flaky.tar.gz"))
    entry = _entry(uri=f"{registry.url}/files/missing.tar.gz", sha256=_sha(archive),
                   mirrors=[f"{registry.url}/files/flaky.tar.gz", good])
    # The uri is a 404 and the first mirror answers 503: the second mirror's copy is used.
    installed = await backends.install([entry], "mine", "default")
    assert installed.run is not None and installed.run.name == "run.sh"
    asked = [path for _, path, _ in registry.requests]
    assert asked.index("/files/missing.tar.gz") < asked.index("/files/flaky.tar.gz")
    assert asked[-1] == "/files/mine.tar.gz"


async def test_a_bad_sha256_installs_nothing(
    tmp_path: Path, backends: Backends, build: Path, registry: FakeRegistry
) -> None:
    archive = _tarball(build, tmp_path / "mine.tar.gz")
    url = registry.add_file("mine.tar.gz", archive)
    with pytest.raises(BackendError, match="digest mismatch"):
        await backends.install([_entry(uri=url, sha256="0" * 64)], "mine", "default")
    assert _left_behind(backends) == []
    assert backends.get("mine") is None


async def test_an_archive_without_run_sh_installs_nothing(
    tmp_path: Path, backends: Backends, build: Path, registry: FakeRegistry
) -> None:
    (build / "run.sh").unlink()
    archive = _tarball(build, tmp_path / "mine.tar.gz")
    url = registry.add_file("mine.tar.gz", archive)
    with pytest.raises(BackendError, match=r"no run\.sh or llama-server"):
        await backends.install([_entry(uri=url, sha256=_sha(archive))], "mine", "default")
    assert _left_behind(backends) == []


async def test_a_url_without_sha256_is_refused(backends: Backends,
                                               registry: FakeRegistry) -> None:
    with pytest.raises(BackendError, match="sha256 is required"):
        await backends.install([_entry(uri=f"{registry.url}/files/x.tar.gz")], "mine",
                               "default")
    assert registry.requests == []


async def test_a_malicious_archive_is_refused_and_writes_nothing_outside(
    tmp_path: Path, backends: Backends, registry: FakeRegistry
) -> None:
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        link = tarfile.TarInfo("lib")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path)
        tar.addfile(link)
    url = registry.add_file("evil.tar.gz", evil)
    backends.root.mkdir(parents=True)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(BackendError, match="refusing"):
        await backends.install([_entry(uri=url, sha256=_sha(evil))], "mine", "default")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert _left_behind(backends) == []


async def test_installed_backends_are_kept_unless_forced_and_a_failed_force_keeps_the_old(
    tmp_path: Path, backends: Backends, build: Path, registry: FakeRegistry
) -> None:
    archive = _tarball(build, tmp_path / "mine.tar.gz")
    url = registry.add_file("mine.tar.gz", archive)
    entry = _entry(uri=url, sha256=_sha(archive))
    first = await backends.install([entry], "mine", "default")
    registry.requests.clear()
    assert await backends.install([entry], "mine", "default") == first
    assert registry.requests == []
    (build / "run.sh").write_text(RUN_SH.replace("started", "version 2"))
    newer = _tarball(build, tmp_path / "mine2.tar.gz")
    url2 = registry.add_file("mine2.tar.gz", newer)
    with pytest.raises(BackendError):
        await backends.install([_entry(uri=url2, sha256="1" * 64)], "mine", "default",
                               force=True)
    assert first.run is not None and "started" in first.run.read_text()
    replaced = await backends.install([_entry(uri=url2, sha256=_sha(newer))], "mine",
                                      "default", force=True)
    assert replaced.run is not None and "version 2" in replaced.run.read_text()
    assert _left_behind(backends) == ["mine"]


@pytest.mark.parametrize(("capability", "chosen"), [
    ("nvidia-cuda-12", "build-cuda12"), ("amd", "build-rocm"), ("default", "build-cpu"),
    ("intel", "build-cpu"),  # not in the map: default
])
async def test_a_meta_backend_installs_the_build_for_the_machine(
    tmp_path: Path, backends: Backends, build: Path, capability: str, chosen: str
) -> None:
    entries = [
        _entry(name="best", alias="auto", capabilities={
            "nvidia-cuda-12": "build-cuda12", "amd": "build-rocm", "default": "build-cpu"}),
        *(_entry(name=n, uri=str(build)) for n in ("build-cuda12", "build-rocm", "build-cpu")),
    ]
    meta = await backends.install(entries, "best", capability)
    assert meta.meta_for == chosen and meta.run is None
    assert backends.launcher("best").name == chosen
    assert {b.name for b in backends.all() if b.kind == "installed"} == {"best", chosen}
    assert backends.remove("auto") == ["best", chosen]  # by alias, and both go
    assert _left_behind(backends) == []


async def test_a_meta_without_a_match_or_default_says_so(backends: Backends) -> None:
    entries = [_entry(name="gpu-only", capabilities={"nvidia": "x"})]
    with pytest.raises(BackendError, match="no backend for capability 'amd'"):
        await backends.install(entries, "gpu-only", "amd")


def test_system_and_embedded_backends_are_listed_but_not_removable(backends: Backends) -> None:
    kinds = {b.name: b.kind for b in backends.all()}
    assert kinds == {"llama-cpp": "embedded", "cpu": "embedded", "vendor-llama": "system"}
    for name in ("vendor-llama", "llama-cpp", "cpu"):
        with pytest.raises(BackendError, match="cannot be removed"):
            backends.remove(name)
    assert backends.system is not None
    assert backends.launcher("vendor-llama").run == backends.system / "vendor-llama/llama-server"


async def test_an_embedded_name_cannot_be_taken_by_an_install(backends: Backends,
                                                              build: Path) -> None:
    with pytest.raises(BackendError, match="embedded backend"):
        await backends.install([_entry(name="cpu", uri=str(build))], "cpu", "default")


def test_unknown_backend_tells_how_to_install_it(backends: Backends) -> None:
    with pytest.raises(BackendError, match="backends install nope"):
        backends.launcher("nope")


def test_gallery_errors_name_the_file_entry_and_key() -> None:
    with pytest.raises(GalleryError, match=r"g\.yaml: broken: sha256"):
        parse("- {name: broken, uri: x.tgz, sha256: nothex}\n", "g.yaml")
    with pytest.raises(GalleryError, match="needs a uri"):
        parse("- {name: empty}\n", "g.yaml")
    with pytest.raises(GalleryError, match="invalid backend name"):
        parse("- {name: ../up, uri: x}\n", "g.yaml")


async def test_galleries_by_url_resolve_relative_uris_and_a_broken_one_does_not_hide_others(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    index = tmp_path / "index.yaml"
    index.write_text("backends:\n  - {name: remote, uri: builds/remote.tgz, sha256: "
                     + "a" * 64 + "}\n")
    url = registry.add_file("index.yaml", index)
    async with client_for(FAST) as client:
        entries, problems = await read_galleries(
            [str(tmp_path / "missing.yaml"), url], client)
    assert [e.name for e in entries] == ["remote"]
    assert entries[0].locations() == [f"{registry.url}/files/builds/remote.tgz"]
    assert len(problems) == 1 and "missing.yaml" in problems[0]

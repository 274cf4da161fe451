"""The small fixes applied to the pinned llama.cpp tree before it compiles.

Each is an exact replacement that must match once in the pinned source (a new pin that moved
the code fails the build loudly rather than compiling without the fix). Their digest is part
of every payload's cache key, so a binary built without one is never taken for one with it.
Each says why in ``why``; ``bench/findings.md`` has the measurements.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

MARKER_PREFIX = ".switchboard-patched-"


class PatchError(Exception):
    """A patch does not match the source it is meant for."""


@dataclass(frozen=True)
class SourcePatch:
    path: str  # relative to the llama.cpp tree
    old: str
    new: str
    why: str


# llama-server re-ran the chat template's differential analysis (rendering the template many
# times over, more for one that can call tools) on every chat request; it depends on the
# template alone. Cached by template source: the default model's bundled Gemma template cost
# about 2 ms per request before (issue 23).
CACHE_TEMPLATE_ANALYSIS = SourcePatch(
    path="common/chat.cpp",
    old="""        struct autoparser::autoparser autoparser;
        autoparser.analyze_template(tmpl);
""",
    new="""        // switchboard: the analysis depends on the template alone; it ran per request.
        // Keyed by what it renders with: the source and the BOS/EOS tokens (the template
        // checked at start-up, without a model, has none).
        static std::mutex analysis_mutex;
        static std::map<std::string, autoparser::autoparser> analyses;
        const std::string analysis_key =
            src + '\0' + tmpl.bos_token() + '\0' + tmpl.eos_token();
        struct autoparser::autoparser autoparser;
        {
            std::lock_guard<std::mutex> lock(analysis_mutex);
            auto found = analyses.find(analysis_key);
            if (found != analyses.end()) {
                autoparser = found->second;
            }
        }
        if (!autoparser.analysis_complete) {
            autoparser.analyze_template(tmpl);
            std::lock_guard<std::mutex> lock(analysis_mutex);
            analyses.emplace(analysis_key, autoparser);
        }
""",
    why="cache the chat template's analysis instead of re-running it per request",
)
INCLUDES = SourcePatch(
    path="common/chat.cpp",
    old="#include <functional>\n",
    new="#include <functional>\n#include <map>\n#include <mutex>\n",
    why="what the template-analysis cache uses",
)

PATCHES: tuple[SourcePatch, ...] = (INCLUDES, CACHE_TEMPLATE_ANALYSIS)


def digest(patches: tuple[SourcePatch, ...] = PATCHES) -> str:
    material = json.dumps([asdict(patch) for patch in patches], sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def marker(source: Path, patches: tuple[SourcePatch, ...] = PATCHES) -> Path:
    """The file that says ``source`` has these patches; another digest's means other ones."""
    return source / f"{MARKER_PREFIX}{digest(patches)}"


def patched_otherwise(source: Path, patches: tuple[SourcePatch, ...] = PATCHES) -> bool:
    """Whether ``source`` carries another set of patches (an earlier version of these): it
    must be unpacked afresh, since their replacements no longer match."""
    mine = marker(source, patches).name
    return any(found.name != mine for found in source.glob(f"{MARKER_PREFIX}*"))


def apply(source: Path, patches: tuple[SourcePatch, ...] = PATCHES) -> None:
    """Apply ``patches`` to the tree at ``source`` once: a patched file is left as it is."""
    marker_file = marker(source, patches)
    if marker_file.is_file():
        return
    for patch in patches:
        path = source / patch.path
        text = path.read_text()
        if patch.new in text:
            continue  # applied already
        if text.count(patch.old) != 1:
            raise PatchError(f"{patch.path}: the text to replace ({patch.why}) occurs "
                             f"{text.count(patch.old)} times, not once: the pinned source moved")
        path.write_text(text.replace(patch.old, patch.new))
    marker_file.touch()

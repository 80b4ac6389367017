"""The overrides of the choice: ``NIM_MODEL_PROFILE`` names one profile, ``NIM_TAGS_SELECTOR`` filters.

An override that names nothing, or only profiles this host cannot run, is an
error that lists what would have worked; nothing starts (docs/design.md,
"Selection"). ``match_profiles`` is the one rule for naming a profile: a full
ID, a name, or an ID prefix of at least ``MIN_PREFIX`` characters, for
``NIM_MODEL_PROFILE`` and every ``--profile`` option alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from nimbuild.errors import NimbuildError
from nimbuild.manifest import Profile
from nimbuild.runtime.settings import Settings

if TYPE_CHECKING:
    from nimbuild.runtime.selection import Classified

MIN_PREFIX = 8


def _runnable_list(classified: list[Classified]) -> str:
    runnable = [c for c in classified if c.status == "runnable"]
    if not runnable:
        return "no profile is runnable on this host"
    return "runnable here: " + ", ".join(f"{c.profile.id} ({c.profile.name})" for c in runnable)


def match_profiles(value: str, profiles: Sequence[Profile]) -> list[Profile]:
    """The profiles ``value`` names: a full ID, a name, or an ID prefix of at least MIN_PREFIX characters.

    One rule for NIM_MODEL_PROFILE and every ``--profile`` option; more than one
    match means the prefix is ambiguous (the caller says so).
    """
    value = (value or "").strip()
    exact = [p for p in profiles if p.id == value or p.name == value]
    if exact or len(value) < MIN_PREFIX:
        return exact
    prefix = value.lower()
    return [p for p in profiles if p.id.startswith(prefix)]


def _match_profile(value: str, classified: list[Classified]) -> list[Classified]:
    """NIM_MODEL_PROFILE, by :func:`match_profiles`."""
    ids = {id(p) for p in match_profiles(value, [c.profile for c in classified])}
    return [c for c in classified if id(c.profile) in ids]


def apply_overrides(classified: list[Classified], settings: Settings, overrides: dict[str, str]) -> list[Classified]:
    """The runnable profiles the overrides allow, best first; NimbuildError when an override cannot be met."""
    runnable = [c for c in classified if c.status == "runnable"]
    selector_text = settings.tags_selector_text or ""
    profile_text = settings.model_profile or ""
    pool = classified
    if selector_text:
        overrides["NIM_TAGS_SELECTOR"] = selector_text
        wanted = settings.tags_selector
        pool = [c for c in classified if all(c.profile.tags.get(k) == v for k, v in wanted.items())]
        if not pool:
            raise NimbuildError(
                f"NIM_TAGS_SELECTOR={selector_text!r} matches no profile in the manifest",
                hint=f"unset it or change it; {_runnable_list(classified)}",
            )
        if not any(c.status == "runnable" for c in pool) and not profile_text:
            why = "; ".join(f"{c.profile.name}: {c.reason}" for c in pool)
            raise NimbuildError(
                f"NIM_TAGS_SELECTOR={selector_text!r} matches only profiles this host cannot run ({why})",
                hint=f"unset it or change it; {_runnable_list(classified)}",
            )
    if profile_text:
        overrides["NIM_MODEL_PROFILE"] = profile_text
        matches = _match_profile(profile_text, classified)
        if not matches:
            short = f" (an ID prefix needs at least {MIN_PREFIX} characters)" if len(profile_text) < MIN_PREFIX else ""
            raise NimbuildError(
                f"NIM_MODEL_PROFILE={profile_text!r} matches no profile ID or name in the manifest{short}",
                hint=f"give a full ID, a unique ID prefix or a name; {_runnable_list(classified)}",
            )
        if len(matches) > 1:
            ids = ", ".join(f"{c.profile.id} ({c.profile.name})" for c in matches)
            raise NimbuildError(
                f"NIM_MODEL_PROFILE={profile_text!r} matches {len(matches)} profiles: {ids}",
                hint=f"give more characters of the ID, or the name; {_runnable_list(classified)}",
            )
        match = matches[0]
        if all(c is not match for c in pool):
            raise NimbuildError(
                f"NIM_MODEL_PROFILE={profile_text!r} names {match.profile.id} ({match.profile.name}), "
                f"which NIM_TAGS_SELECTOR={selector_text!r} excludes",
                hint=f"unset one of the two; {_runnable_list(classified)}",
            )
        if match.status != "runnable":
            what = "compatible but not runnable" if match.status == "not_runnable" else "incompatible"
            raise NimbuildError(
                f"NIM_MODEL_PROFILE={profile_text!r} names {match.profile.id} ({match.profile.name}), "
                f"which this host cannot run ({what}: {match.reason})",
                hint=f"unset it or pick another; {_runnable_list(classified)}",
            )
        return [match]
    allowed = {id(c) for c in pool}
    return [c for c in runnable if id(c) in allowed]

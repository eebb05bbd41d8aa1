"""Where the demo corpus's text comes from: software translation catalogs (data_prep.demo_corpus).

LibreOffice's UI catalogs from Debian's ``libreoffice-l10n-<locale>`` packages (``apt-get
download`` into a cache, then ``dpkg-deb -x``), or the catalogs that ship inside the installed
``django`` package; locale names mapped to Flores-200 codes; messages extracted from ``.mo``
files with the cleaning rules listed in data_prep.demo_corpus.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from data_prep import clean
from data_prep.manifest import atomic_dir
from data_prep.readers import read_mo
from nmt.errors import UserError
from nmt.langs import ALIASES, is_flores

LO_PREFIX = "libreoffice-l10n-"
LO_RESOURCES = "usr/lib/libreoffice/program/resource"
# Locales whose Flores-200 code is not their ISO 639-1 alias.
LOCALE_FLORES = {
    "zh_CN": "zho_Hans", "zh_Hans": "zho_Hans", "zh_TW": "zho_Hant", "zh_Hant": "zho_Hant",
    "pt_BR": "por_Latn", "pa_IN": "pan_Guru", "gug": "grn_Latn", "kmr": "kmr_Latn",
    "kmr_Latn": "kmr_Latn", "szl": "szl_Latn", "nso": "nso_Latn", "ckb": "ckb_Arab",
    "ss": "ssw_Latn", "sr": "srp_Cyrl", "sr_Cyrl": "srp_Cyrl",
}
# When several locales map to one code: Flores' Portuguese is Brazilian; Bokmål over "no".
PREFERRED = {"por_Latn": ("pt_BR", "pt"), "nob_Latn": ("nb", "no")}


def normalize_locale(locale: str) -> str:
    """``zh-cn`` (Debian package suffix) -> ``zh_CN``; ``sr-latn`` -> ``sr_Latn``."""
    lang, _, region = locale.replace("-", "_").partition("_")
    return f"{lang}_{region.upper() if len(region) == 2 else region.title()}" if region else lang


def locale_to_flores(locale: str) -> str | None:
    """``de`` -> ``deu_Latn``, ``zh-cn``/``zh_CN`` -> ``zho_Hans``; ``None`` when Flores-200 has
    no code for it (regional or script variants such as ``en_GB``, ``sr@latin``, ``es_AR``)."""
    loc = normalize_locale(locale)
    lang, _, region = loc.partition("_")
    if loc in LOCALE_FLORES:
        return LOCALE_FLORES[loc]
    if region or "@" in locale or lang == "en":
        return None
    code = ALIASES.get(lang)
    return code if code and is_flores(code) else None


def choose_locales(locales: list[str], langs: list[str], source: str) -> dict[str, str]:
    """Map each wanted Flores code to one locale of the source; print what has no code."""
    by_code: dict[str, list[str]] = defaultdict(list)
    unmapped = []
    for loc in sorted(locales):
        code = locale_to_flores(loc)
        (by_code[code].append(loc) if code else unmapped.append(loc))
    if unmapped:
        print(f"{source} locales without a Flores-200 code (not usable): {', '.join(unmapped)}")
    chosen = {}
    for code in langs:
        if not by_code.get(code):
            have = " ".join(sorted(by_code))
            raise UserError(f"--langs {code}: {source} has no catalog for it; choose from: {have}")
        pref = PREFERRED.get(code, ())
        rank = {loc: pref.index(normalize_locale(loc)) if normalize_locale(loc) in pref else len(pref)
                for loc in by_code[code]}
        chosen[code] = min(by_code[code], key=lambda x: (rank[x], len(x), x))
    return chosen


@dataclass
class Catalogs:
    """Where the chosen languages' catalogs are, and the input files to record."""

    source: str
    files: dict[str, list[Path]]          # Flores code -> .mo files
    locales: dict[str, str]               # Flores code -> locale
    inputs: list[Path] = field(default_factory=list)
    accelerators: bool = True             # strip ~ / _ markers (LibreOffice, not Django)


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"{' '.join(cmd[:2])} failed ({e}); use --source django") from None


def libreoffice_catalogs(langs: list[str], cache: Path) -> Catalogs:
    """Download (once) and unpack the LibreOffice UI translations of ``langs``."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise UserError("--source libreoffice needs apt-get and dpkg-deb (Debian/Ubuntu); "
                        "use --source django instead")
    cache = cache / "libreoffice"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{cache}: cannot create the download cache ({e.strerror}); pass --cache DIR") from None
    root = os.geteuid() == 0
    names = _run(["apt-cache", "pkgnames", LO_PREFIX]).stdout.split()
    if not names and root:
        print("package lists are missing: running apt-get update once")
        _run(["apt-get", "update"])
        names = _run(["apt-cache", "pkgnames", LO_PREFIX]).stdout.split()
    if not names:
        raise UserError(f"apt knows no {LO_PREFIX}* packages; run apt-get update as root "
                        "or use --source django")
    suffixes = [n[len(LO_PREFIX):] for n in names]
    locales = choose_locales(suffixes, langs, "LibreOffice")
    pkgs = {code: LO_PREFIX + suffix for code, suffix in locales.items()}
    missing = [p for p in pkgs.values() if not any(cache.glob(f"{p}_*.deb"))]
    if missing:
        print(f"downloading {len(missing)} packages into {cache}: {' '.join(missing)}")
        cmd = ["apt-get", "download", *(["-o", "APT::Sandbox::User=root"] if root else []), *missing]
        r = _run(cmd, cwd=cache)
        if r.returncode != 0 and root:  # stale lists name versions the mirror no longer has
            print("apt-get download failed: running apt-get update once and retrying")
            _run(["apt-get", "update"])
            r = _run(cmd, cwd=cache)
        if r.returncode != 0:
            why = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"apt-get download failed ({why}); run apt-get update as root, check the "
                            "network, or use --source django")
    debs = {}
    for code, pkg in pkgs.items():
        got = sorted(cache.glob(f"{pkg}_*.deb"))
        if not got:
            raise UserError(f"apt-get download {pkg} left no {pkg}_*.deb in {cache}; use --source django")
        debs[code] = got[-1]
    files = {}
    for code, deb in tqdm(debs.items(), desc="unpack", unit="pkg", disable=None):
        tree = cache / deb.stem
        if not tree.is_dir():
            with atomic_dir(tree) as tmp:
                r = _run(["dpkg-deb", "-x", str(deb), str(tmp)])
                if r.returncode != 0:
                    raise UserError(f"{deb}: dpkg-deb -x failed ({r.stderr.strip()}); delete the file "
                                    "and run again to download it anew")
        res = tree / LO_RESOURCES
        dirs = [d for d in sorted(res.iterdir()) if locale_to_flores(d.name) == code] if res.is_dir() else []
        files[code] = sorted(dirs[0].glob("LC_MESSAGES/*.mo")) if dirs else []
        if not files[code]:
            raise UserError(f"{deb}: no {LO_RESOURCES}/<locale>/LC_MESSAGES/*.mo for {code}; "
                            "delete the file and its unpacked folder from the cache and run again")
    versions = sorted({d.stem.split("_")[1].replace("%3a", ":") for d in debs.values()})
    return Catalogs(f"LibreOffice UI, Debian {LO_PREFIX}* {', '.join(versions)}", files,
                    locales, list(debs.values()))


def django_catalogs(langs: list[str]) -> Catalogs:
    """The .mo catalogs of the installed django package (core and contrib apps)."""
    spec = importlib.util.find_spec("django")
    if spec is None or not spec.origin:
        raise UserError("--source django needs the django package: pip install django")
    root = Path(spec.origin).parent
    locale_dirs = [root / "conf" / "locale", *sorted(root.glob("contrib/*/locale"))]
    found = sorted({d.name for base in locale_dirs if base.is_dir()
                    for d in base.iterdir() if d.is_dir() and (d / "LC_MESSAGES").is_dir()})
    locales = choose_locales(found, langs, "Django")
    files = {code: sorted(f for base in locale_dirs for f in (base / loc / "LC_MESSAGES").glob("*.mo"))
             for code, loc in locales.items()}
    version = importlib.metadata.version("django")
    return Catalogs(f"Django {version} catalogs", files, locales,
                    [f for fs in files.values() for f in fs], accelerators=False)


def extract(files: list[Path], accelerators: bool,
            english: dict[str, tuple[str, bool, list[str]]] | None = None) -> tuple[dict[str, str], Counter]:
    """English -> translation for one language, and counts of what was dropped and why.

    ``english`` caches the cleaned English side across languages (msgid -> (text, has words,
    placeholders)); every language repeats the same msgids.
    """
    english = {} if english is None else english
    votes: dict[str, Counter] = defaultdict(Counter)
    why: Counter = Counter()
    for path in files:
        for entry in read_mo(path):
            why["messages"] += 1
            if entry.msgid not in english:
                en = clean.clean_ui_string(entry.msgid, accelerators=accelerators)
                english[entry.msgid] = (en, bool(clean.split_key(en)), clean.placeholders(en))
            en, has_words, en_ph = english[entry.msgid]
            tr = clean.clean_ui_string(entry.msgstr[0], accelerators=accelerators)
            if not has_words:
                why["no_words"] += 1
            elif not tr:
                why["empty"] += 1
            elif tr == en:
                why["identical"] += 1
            elif en_ph != clean.placeholders(tr):
                why["placeholders"] += 1
            else:
                votes[en][tr] += 1
    pick = {en: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for en, c in votes.items()}
    why["several_translations"] = sum(len(c) > 1 for c in votes.values())
    return pick, why

"""Flores-200 language codes, aliases, and the NLLB language-tag convention.

Codes are ``<ISO 639-3>_<ISO 15924 script>`` (``eng_Latn``). Every Flores-200 language has a
reserved tag token ``__eng_Latn__`` in every vocabulary we train, followed by spare tag slots,
so adding a language later needs no resize of the embedding matrix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from nmt.errors import UserError

FLORES200: tuple[str, ...] = (
    "ace_Arab", "ace_Latn", "acm_Arab", "acq_Arab", "aeb_Arab", "afr_Latn", "ajp_Arab",
    "aka_Latn", "als_Latn", "amh_Ethi", "apc_Arab", "arb_Arab", "arb_Latn", "ars_Arab",
    "ary_Arab", "arz_Arab", "asm_Beng", "ast_Latn", "awa_Deva", "ayr_Latn", "azb_Arab",
    "azj_Latn", "bak_Cyrl", "bam_Latn", "ban_Latn", "bel_Cyrl", "bem_Latn", "ben_Beng",
    "bho_Deva", "bjn_Arab", "bjn_Latn", "bod_Tibt", "bos_Latn", "bug_Latn", "bul_Cyrl",
    "cat_Latn", "ceb_Latn", "ces_Latn", "cjk_Latn", "ckb_Arab", "crh_Latn", "cym_Latn",
    "dan_Latn", "deu_Latn", "dik_Latn", "dyu_Latn", "dzo_Tibt", "ell_Grek", "eng_Latn",
    "epo_Latn", "est_Latn", "eus_Latn", "ewe_Latn", "fao_Latn", "fij_Latn", "fin_Latn",
    "fon_Latn", "fra_Latn", "fur_Latn", "fuv_Latn", "gaz_Latn", "gla_Latn", "gle_Latn",
    "glg_Latn", "grn_Latn", "guj_Gujr", "hat_Latn", "hau_Latn", "heb_Hebr", "hin_Deva",
    "hne_Deva", "hrv_Latn", "hun_Latn", "hye_Armn", "ibo_Latn", "ilo_Latn", "ind_Latn",
    "isl_Latn", "ita_Latn", "jav_Latn", "jpn_Jpan", "kab_Latn", "kac_Latn", "kam_Latn",
    "kan_Knda", "kas_Arab", "kas_Deva", "kat_Geor", "kaz_Cyrl", "kbp_Latn", "kea_Latn",
    "khk_Cyrl", "khm_Khmr", "kik_Latn", "kin_Latn", "kir_Cyrl", "kmb_Latn", "kmr_Latn",
    "knc_Arab", "knc_Latn", "kon_Latn", "kor_Hang", "lao_Laoo", "lij_Latn", "lim_Latn",
    "lin_Latn", "lit_Latn", "lmo_Latn", "ltg_Latn", "ltz_Latn", "lua_Latn", "lug_Latn",
    "luo_Latn", "lus_Latn", "lvs_Latn", "mag_Deva", "mai_Deva", "mal_Mlym", "mar_Deva",
    "min_Arab", "min_Latn", "mkd_Cyrl", "mlt_Latn", "mni_Beng", "mos_Latn", "mri_Latn",
    "mya_Mymr", "nld_Latn", "nno_Latn", "nob_Latn", "npi_Deva", "nso_Latn", "nus_Latn",
    "nya_Latn", "oci_Latn", "ory_Orya", "pag_Latn", "pan_Guru", "pap_Latn", "pbt_Arab",
    "pes_Arab", "plt_Latn", "pol_Latn", "por_Latn", "prs_Arab", "quy_Latn", "ron_Latn",
    "run_Latn", "rus_Cyrl", "sag_Latn", "san_Deva", "sat_Beng", "scn_Latn", "shn_Mymr",
    "sin_Sinh", "slk_Latn", "slv_Latn", "smo_Latn", "sna_Latn", "snd_Arab", "som_Latn",
    "sot_Latn", "spa_Latn", "srd_Latn", "srp_Cyrl", "ssw_Latn", "sun_Latn", "swe_Latn",
    "swh_Latn", "szl_Latn", "tam_Taml", "taq_Latn", "taq_Tfng", "tat_Cyrl", "tel_Telu",
    "tgk_Cyrl", "tgl_Latn", "tha_Thai", "tir_Ethi", "tpi_Latn", "tsn_Latn", "tso_Latn",
    "tuk_Latn", "tum_Latn", "tur_Latn", "twi_Latn", "tzm_Tfng", "uig_Arab", "ukr_Cyrl",
    "umb_Latn", "urd_Arab", "uzn_Latn", "vec_Latn", "vie_Latn", "war_Latn", "wol_Latn",
    "xho_Latn", "ydd_Hebr", "yor_Latn", "yue_Hant", "zho_Hans", "zho_Hant", "zsm_Latn",
    "zul_Latn",
)
assert len(FLORES200) == 204

# Spare tag slots after the 204 Flores-200 tags: new languages take these, ids never move.
NUM_SPARE_TAGS = 52

# Common ISO 639-1 / ISO 639-3 / locale aliases that map to exactly one Flores-200 code.
# Anything not here must be given as a Flores-200 code (an error says so).
ALIASES: dict[str, str] = {
    "af": "afr_Latn", "am": "amh_Ethi", "ar": "arb_Arab", "as": "asm_Beng", "ast": "ast_Latn",
    "az": "azj_Latn", "be": "bel_Cyrl", "bg": "bul_Cyrl", "bn": "ben_Beng", "bo": "bod_Tibt",
    "bs": "bos_Latn", "ca": "cat_Latn", "cs": "ces_Latn", "cy": "cym_Latn", "da": "dan_Latn",
    "de": "deu_Latn", "dz": "dzo_Tibt", "el": "ell_Grek", "en": "eng_Latn", "eo": "epo_Latn",
    "es": "spa_Latn", "et": "est_Latn", "eu": "eus_Latn", "fa": "pes_Arab", "fi": "fin_Latn",
    "fo": "fao_Latn", "fr": "fra_Latn", "fur": "fur_Latn", "ga": "gle_Latn", "gd": "gla_Latn",
    "gl": "glg_Latn", "gu": "guj_Gujr", "ha": "hau_Latn", "he": "heb_Hebr", "hi": "hin_Deva",
    "hr": "hrv_Latn", "hu": "hun_Latn", "hy": "hye_Armn", "id": "ind_Latn", "ig": "ibo_Latn",
    "is": "isl_Latn", "it": "ita_Latn", "ja": "jpn_Jpan", "jv": "jav_Latn", "ka": "kat_Geor",
    "kab": "kab_Latn", "kk": "kaz_Cyrl", "km": "khm_Khmr", "kn": "kan_Knda", "ko": "kor_Hang",
    "ky": "kir_Cyrl", "lb": "ltz_Latn", "lo": "lao_Laoo", "lt": "lit_Latn", "lv": "lvs_Latn",
    "mk": "mkd_Cyrl", "ml": "mal_Mlym", "mn": "khk_Cyrl", "mr": "mar_Deva", "ms": "zsm_Latn",
    "mt": "mlt_Latn", "my": "mya_Mymr", "nb": "nob_Latn", "ne": "npi_Deva", "nl": "nld_Latn",
    "nn": "nno_Latn", "no": "nob_Latn", "ny": "nya_Latn", "oc": "oci_Latn", "om": "gaz_Latn",
    "or": "ory_Orya", "pa": "pan_Guru", "pl": "pol_Latn", "ps": "pbt_Arab", "pt": "por_Latn",
    "pt_BR": "por_Latn", "ro": "ron_Latn", "ru": "rus_Cyrl", "rw": "kin_Latn", "sa": "san_Deva",
    "sd": "snd_Arab", "si": "sin_Sinh", "sk": "slk_Latn", "sl": "slv_Latn", "sm": "smo_Latn",
    "sn": "sna_Latn", "so": "som_Latn", "sq": "als_Latn", "sr": "srp_Cyrl", "st": "sot_Latn",
    "su": "sun_Latn", "sv": "swe_Latn", "sw": "swh_Latn", "ta": "tam_Taml", "te": "tel_Telu",
    "tg": "tgk_Cyrl", "th": "tha_Thai", "ti": "tir_Ethi", "tk": "tuk_Latn", "tl": "tgl_Latn",
    "tn": "tsn_Latn", "tr": "tur_Latn", "ts": "tso_Latn", "tt": "tat_Cyrl", "ug": "uig_Arab",
    "uk": "ukr_Cyrl", "ur": "urd_Arab", "uz": "uzn_Latn", "vec": "vec_Latn", "vi": "vie_Latn",
    "wo": "wol_Latn", "xh": "xho_Latn", "yo": "yor_Latn", "zh": "zho_Hans", "zh_CN": "zho_Hans",
    "zh_TW": "zho_Hant", "zu": "zul_Latn",
    "eng": "eng_Latn", "deu": "deu_Latn", "fra": "fra_Latn", "spa": "spa_Latn", "rus": "rus_Cyrl",
    "jpn": "jpn_Jpan", "kor": "kor_Hang", "ita": "ita_Latn", "por": "por_Latn", "ukr": "ukr_Cyrl",
}

# Flores+ (the Open Language Data Initiative's continuation of Flores-200) relabelled these codes;
# source: github.com/openlanguagedata/flores CHANGELOG.md, releases v2.0-rc.1 and v2.0-rc.2.
# Every other Flores-200 code is the same in Flores+.
FLORES200_TO_PLUS: dict[str, str] = {
    "zho_Hans": "cmn_Hans", "zho_Hant": "cmn_Hant", "tgl_Latn": "fil_Latn", "tzm_Tfng": "zgh_Tfng",
    "est_Latn": "ekk_Latn", "grn_Latn": "gug_Latn", "kon_Latn": "ktu_Latn",
    "ajp_Arab": "apc_Arab_sout3123", "apc_Arab": "apc_Arab_nort3139",
    "aka_Latn": "twi_Latn_asan1239", "twi_Latn": "twi_Latn_akua1239",
}
FLORES_PLUS_TO_200: dict[str, str] = {v: k for k, v in FLORES200_TO_PLUS.items()}

_FLORES_SET = frozenset(FLORES200)
ENGLISH = "eng_Latn"


def to_flores_plus(code: str) -> str:
    """The Flores+ file code of a Flores-200 code (``zho_Hans`` -> ``cmn_Hans``)."""
    return FLORES200_TO_PLUS.get(code, code)


def from_flores_plus(code: str) -> str:
    """The Flores-200 code of a Flores+ code (``cmn_Hans`` -> ``zho_Hans``); a Flores+ language
    that Flores-200 lacks (e.g. ``nqo_Nkoo``) is returned unchanged (not a Flores-200 code)."""
    return FLORES_PLUS_TO_200.get(code, code)


def is_flores(code: str) -> bool:
    return code in _FLORES_SET


def normalize_lang(code: str, *, allow_alias: bool = True, where: str = "") -> str:
    """Return the Flores-200 code for ``code`` or raise a UserError naming ``where``.

    Flores-200 codes pass through; with ``allow_alias`` the aliases above and the renamed
    Flores+ codes (``cmn_Hans`` -> ``zho_Hans``) are mapped.
    """
    if code in _FLORES_SET:
        return code
    if allow_alias and code in ALIASES:
        return ALIASES[code]
    if allow_alias and code in FLORES_PLUS_TO_200:  # a renamed Flores+ code names the same language
        return FLORES_PLUS_TO_200[code]
    loc = f" ({where})" if where else ""
    hint = ""
    low = code.lower()
    close = [c for c in FLORES200 if c.lower().startswith(low[:3])] if len(low) >= 3 else []
    if close:
        hint = f"; did you mean {', '.join(close[:4])}?"
    raise UserError(
        f"unknown language code {code!r}{loc}: use a Flores-200 code such as eng_Latn or "
        f"fra_Latn{hint} (the full list is nmt.langs.FLORES200)"
    )


def lang_tag(code: str) -> str:
    """The tag token of a language: ``__eng_Latn__`` (NLLB convention)."""
    return f"__{code}__"


def all_tag_tokens() -> list[str]:
    """Tag tokens in their fixed vocabulary order: 204 Flores-200 tags then the spare slots."""
    return [lang_tag(c) for c in FLORES200] + [f"__spare{i}__" for i in range(NUM_SPARE_TAGS)]


def parse_direction(direction: str, *, where: str = "") -> tuple[str, str]:
    """``"eng_Latn-fra_Latn"`` -> ``("eng_Latn", "fra_Latn")`` with both codes validated."""
    parts = direction.split("-")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        loc = f" ({where})" if where else ""
        raise UserError(f"bad direction {direction!r}{loc}: write it as SRC-TGT, e.g. eng_Latn-fra_Latn")
    return normalize_lang(parts[0], where=where), normalize_lang(parts[1], where=where)


def direction_group(src: str, tgt: str) -> str:
    """English-centric group used for averages: ``en-xx``, ``xx-en`` or ``xx-yy``."""
    if src == ENGLISH:
        return "en-xx"
    if tgt == ENGLISH:
        return "xx-en"
    return "xx-yy"


# -- languages of one model (nmt.vocab add-language) -------------------------------------------
# A Flores-style code: ISO 639-3 letters, "_", an ISO 15924 script, optionally "_" + a glottocode.
_CODE_RE = re.compile(r"[a-z]{3}_[A-Z][a-z]{3}(_[a-z]{4}[0-9]{4})?")


def is_lang_code(code: str) -> bool:
    """True for any well-formed Flores-style code (``xxx_Scrp`` or ``xxx_Scrp_abcd1234``)."""
    return bool(_CODE_RE.fullmatch(code))


def languages_of(directions: Iterable[str]) -> list[str]:
    """The sorted languages of ``src-tgt`` directions (the language set of a model without a record)."""
    return sorted({code for d in directions for code in str(d).split("-") if code})

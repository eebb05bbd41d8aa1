"""M2M-100's language codes (``__xx__`` tokens of Transformers' ``M2M100Tokenizer``) → nmt codes.

One table, one entry per M2M-100 code, each a choice a reader can check against the Flores-200
list (nmt.langs.FLORES200). An ISO 639-1 macrolanguage code maps to the member Flores-200 has
(``ar`` → ``arb_Arab`` Modern Standard Arabic, ``fa`` → ``pes_Arab`` Western Persian, ``ms`` →
``zsm_Latn`` Standard Malay, ``mn`` → ``khk_Cyrl`` Halh Mongolian, ``ne`` → ``npi_Deva``, ``lv``
→ ``lvs_Latn``, ``sw`` → ``swh_Latn``, ``uz`` → ``uzn_Latn``, ``sq`` → ``als_Latn``, ``ps`` →
``pbt_Arab``, ``mg`` → ``plt_Latn``, ``yi`` → ``ydd_Hebr``, ``az`` → ``azj_Latn``, ``ff`` →
``fuv_Latn``, Flores-200's only Fula), ``zh`` → ``zho_Hans`` (M2M-100's Chinese data is
Simplified), ``no`` → ``nob_Latn`` (Bokmål), ``sr`` → ``srp_Cyrl`` (Flores-200's Serbian).
Breton (``br``) and Western Frisian (``fy``) have no Flores-200 code: they get Flores-style codes
(ISO 639-3 + script) that the import puts in spare tag slots, as ``nmt.vocab add-language``
does, so the model still translates them (docs/interop.md).
"""

from __future__ import annotations

from nmt.langs import FLORES200

# fmt: off
M2M100_TO_NMT: dict[str, str] = {
    "af": "afr_Latn", "am": "amh_Ethi", "ar": "arb_Arab", "ast": "ast_Latn", "az": "azj_Latn",
    "ba": "bak_Cyrl", "be": "bel_Cyrl", "bg": "bul_Cyrl", "bn": "ben_Beng", "br": "bre_Latn",
    "bs": "bos_Latn", "ca": "cat_Latn", "ceb": "ceb_Latn", "cs": "ces_Latn", "cy": "cym_Latn",
    "da": "dan_Latn", "de": "deu_Latn", "el": "ell_Grek", "en": "eng_Latn", "es": "spa_Latn",
    "et": "est_Latn", "fa": "pes_Arab", "ff": "fuv_Latn", "fi": "fin_Latn", "fr": "fra_Latn",
    "fy": "fry_Latn", "ga": "gle_Latn", "gd": "gla_Latn", "gl": "glg_Latn", "gu": "guj_Gujr",
    "ha": "hau_Latn", "he": "heb_Hebr", "hi": "hin_Deva", "hr": "hrv_Latn", "ht": "hat_Latn",
    "hu": "hun_Latn", "hy": "hye_Armn", "id": "ind_Latn", "ig": "ibo_Latn", "ilo": "ilo_Latn",
    "is": "isl_Latn", "it": "ita_Latn", "ja": "jpn_Jpan", "jv": "jav_Latn", "ka": "kat_Geor",
    "kk": "kaz_Cyrl", "km": "khm_Khmr", "kn": "kan_Knda", "ko": "kor_Hang", "lb": "ltz_Latn",
    "lg": "lug_Latn", "ln": "lin_Latn", "lo": "lao_Laoo", "lt": "lit_Latn", "lv": "lvs_Latn",
    "mg": "plt_Latn", "mk": "mkd_Cyrl", "ml": "mal_Mlym", "mn": "khk_Cyrl", "mr": "mar_Deva",
    "ms": "zsm_Latn", "my": "mya_Mymr", "ne": "npi_Deva", "nl": "nld_Latn", "no": "nob_Latn",
    "ns": "nso_Latn", "oc": "oci_Latn", "or": "ory_Orya", "pa": "pan_Guru", "pl": "pol_Latn",
    "ps": "pbt_Arab", "pt": "por_Latn", "ro": "ron_Latn", "ru": "rus_Cyrl", "sd": "snd_Arab",
    "si": "sin_Sinh", "sk": "slk_Latn", "sl": "slv_Latn", "so": "som_Latn", "sq": "als_Latn",
    "sr": "srp_Cyrl", "ss": "ssw_Latn", "su": "sun_Latn", "sv": "swe_Latn", "sw": "swh_Latn",
    "ta": "tam_Taml", "th": "tha_Thai", "tl": "tgl_Latn", "tn": "tsn_Latn", "tr": "tur_Latn",
    "uk": "ukr_Cyrl", "ur": "urd_Arab", "uz": "uzn_Latn", "vi": "vie_Latn", "wo": "wol_Latn",
    "xh": "xho_Latn", "yi": "ydd_Hebr", "yo": "yor_Latn", "zh": "zho_Hans", "zu": "zul_Latn",
}
# fmt: on
NMT_TO_M2M100 = {v: k for k, v in M2M100_TO_NMT.items()}
assert len(NMT_TO_M2M100) == len(M2M100_TO_NMT) == 100


def m2m_token(code: str) -> str:
    """The tokenizer's token of an M2M-100 code: ``__en__``."""
    return f"__{code}__"


def outside_flores(codes: list[str]) -> list[str]:
    """The nmt codes among ``codes`` that are not Flores-200 (they take spare tag slots)."""
    return [c for c in codes if c not in FLORES200]

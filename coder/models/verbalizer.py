"""The verbalizer: which vocabulary tokens stand for a positive and a negative code (KEPT: yes/no).

Ids are looked up in the tokenizer, never hard-coded; a word that is not one token is an error
because the LM head scores one token per mask.

BPE vocabularies (RoBERTa, Longformer) hold two tokens per word: the bare form (`yes`) and the
space-prefixed one a word takes inside a sentence (`Ġyes`). `form="spaced"` (kept's default) picks
the space-prefixed token, falling back to the bare one; `form="bare"` takes the bare token only, as
KEPT's code does, so a KEPT checkpoint is scored with the tokens it was trained on. WordPiece
vocabularies (BERT) have one form and both settings give the same id.
"""

from __future__ import annotations

from dataclasses import dataclass

from kept.errors import KeptError

FORMS = ("spaced", "bare")


@dataclass(frozen=True)
class Verbalizer:
    yes_word: str
    no_word: str
    yes_id: int
    no_id: int


def single_token_id(tokenizer, word: str, form: str = "spaced") -> int:
    """Id of `word` as the token a mask would be filled with.

    `spaced`: the space-prefixed form (`Ġyes`) when it is a single token, else the bare one;
    `bare`: the bare form only (KEPT's code).
    """
    if form not in FORMS:
        raise KeptError(f"verbalizer form must be one of {', '.join(FORMS)}; got {form!r}")
    if not word or word != word.strip():
        raise KeptError(f"verbalizer word {word!r} must be a non-empty word without spaces")
    tried = []
    for text in ((" " + word, word) if form == "spaced" else (word,)):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        tried.append(tokenizer.convert_ids_to_tokens(ids))
        if len(ids) == 1 and ids[0] != tokenizer.unk_token_id:
            return int(ids[0])
    raise KeptError(
        f"verbalizer word {word!r} is not a single token of this tokenizer (it splits into "
        f"{tried[-1]}); name single-token words with --verbalizer YES,NO")


def build_verbalizer(tokenizer, words: tuple[str, str] | list[str] = ("yes", "no"), form: str = "spaced"
                     ) -> Verbalizer:
    if len(words) != 2:
        raise KeptError(f"a verbalizer needs two words (positive, negative), got {list(words)}")
    yes, no = (w.strip() for w in words)
    yes_id, no_id = single_token_id(tokenizer, yes, form), single_token_id(tokenizer, no, form)
    if yes_id == no_id:
        raise KeptError(f"verbalizer words {yes!r} and {no!r} map to the same token")
    return Verbalizer(yes, no, yes_id, no_id)

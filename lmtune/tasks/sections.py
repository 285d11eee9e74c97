"""Config keys that several tasks read, as small sections that a task's own data (or eval) section
takes in: each task module declares its sections from these and its own keys (tasks/contract.py)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ..core.config import AugmentConfig, Section


class TextColumn(Section):
    text_column: str = Field("text", description="column with the input text")


class GroupColumn(Section):
    group_column: str | None = Field(
        None, description="automatic validation split (classification, causal_lm): rows sharing a value of this "
        "column (a conversation, a document, an author) stay on one side"
    )

    def problems(self, check_files: bool = True) -> list[str]:
        given = self.group_column is not None and getattr(self, "validation", None) is not None
        return super().problems(check_files) + (
            ["data.group_column: only the automatic validation split uses it, and data.validation is given"] if given else [])


class Augmented(Section):
    augment: AugmentConfig | None = Field(
        None, description="classification, token_classification: EDA augmentation of the training split (never validation or test); null: none"
    )

    def problems(self, check_files: bool = True) -> list[str]:
        synonyms = self.augment.synonyms if self.augment is not None else None
        missing = synonyms is not None and check_files and not Path(synonyms).is_file()
        return super().problems(check_files) + ([f"data.augment.synonyms: file not found: {synonyms}"] if missing else [])


class Windows(Section):
    doc_stride: int = Field(
        32, ge=0,
        description="sentences (token_classification) or contexts (question_answering) longer than max_length are cut into windows overlapping by this many tokens",
    )


class Forgetting(Section):
    forgetting: bool | str = Field(
        False, description="causal_lm and masked_lm: the perplexity of a general-domain text at every evaluation, "
        "beside the base model's (did tuning make the model worse at what it knew?); true: the text that ships "
        "with lmtune, or a text file (.txt, one passage a line, or .jsonl with a text field)",
    )

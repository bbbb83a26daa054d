"""The exception tree of `models/` — one root, so the CLI can turn any of them into exit 2.

    ModelsError                 root: anything the model lifecycle refuses to do
    ├── TableError              a bring-your-own table is unusable (no label, one class, empty …)
    ├── DatasetError            a dataset directory is missing files or has the wrong schema
    ├── ArtifactError           a model directory or pointer file is missing or malformed
    ├── RegistryError           the MLflow registry does not know a version, or has no champion
    └── PromotionRefused        a challenger is worse than the champion on held-out scenarios

Every message names what was wrong (the column, the file, the version), because the person
reading it is a data scientist at a terminal, not a developer with a debugger.
"""

from __future__ import annotations


class ModelsError(Exception):
    """Root of every error raised by the model lifecycle."""


class TableError(ModelsError):
    """A bring-your-own table cannot be trained on."""


class DatasetError(ModelsError):
    """A dataset directory cannot be read or built."""


class ArtifactError(ModelsError):
    """A served-model directory or pointer is missing or malformed."""


class RegistryError(ModelsError):
    """The registry has no such version, or no champion to compare against."""


class PromotionRefused(ModelsError):
    """The candidate is worse than the champion on held-out scenarios (use --force to override)."""

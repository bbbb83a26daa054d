"""Detection: streaming features, rules, LightGBM scoring and the action policy.

Exception tree (every error raised on purpose in this package derives from `DetectionError`):

    DetectionError
    ├── ModelError        a model artifact is missing or malformed (detection.model)
    ├── RulesError        a rules file does not parse or names an unknown feature (detection.rules)
    └── EvaluationError   a scenario could not be evaluated (detection.evaluate)
"""


class DetectionError(Exception):
    """Root of the errors detection raises on purpose."""


__all__ = ["DetectionError"]

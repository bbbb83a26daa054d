"""Storage: SQLAlchemy 2 tables and Alembic migrations. The database is the truth."""

from sealguard.storage.base import Base
from sealguard.storage.cluster_tables import RelayNodeRow as RelayNodeRow, RelayRouteRow as RelayRouteRow
from sealguard.storage.db import Database, StorageError, make_engine, upgrade
from sealguard.storage.moderation_tables import (
    AppealRow,
    AuditLogRow,
    CaseRow,
    DecisionRow,
    DetectionCheckpointRow,
    EnforcementApplicationRow,
    LabelRow,
    NoticeRow,
    ReportRow,
    ReviewerRow,
    ScoreRow,
)
from sealguard.storage.relay_tables import (
    AccountRow,
    BlockRow,
    ContactRow,
    GroupMemberRow,
    GroupRow,
    MediaBlobRow,
    MessageCommitmentRow,
    PrekeyRow,
    QueuedMessageRow,
)

__all__ = [
    "AccountRow", "AppealRow", "AuditLogRow", "Base", "BlockRow", "CaseRow", "ContactRow", "Database",
    "DecisionRow", "DetectionCheckpointRow", "EnforcementApplicationRow", "GroupMemberRow", "GroupRow",
    "LabelRow", "MediaBlobRow", "NoticeRow", "MessageCommitmentRow", "PrekeyRow", "QueuedMessageRow", "ReportRow",
    "ReviewerRow", "ScoreRow", "StorageError", "make_engine", "upgrade",
]

"""Storage: SQLAlchemy 2 tables and Alembic migrations. The database is the truth."""

from sealguard.storage.base import Base
from sealguard.storage.cluster_tables import RelayNodeRow as RelayNodeRow
from sealguard.storage.cluster_tables import RelayRouteRow as RelayRouteRow
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
    CommitmentBlockRow,
    ContactRow,
    GroupMemberRow,
    GroupRow,
    MediaBlobRow,
    MessageCommitmentRow,
    PrekeyRow,
    QueuedMessageRow,
    ReportedCommitmentRow,
)

__all__ = [
    "AccountRow", "AppealRow", "AuditLogRow", "Base", "BlockRow", "CaseRow", "CommitmentBlockRow", "ContactRow",
    "Database", "DecisionRow", "DetectionCheckpointRow", "EnforcementApplicationRow", "GroupMemberRow", "GroupRow",
    "LabelRow", "MediaBlobRow", "MessageCommitmentRow", "NoticeRow", "PrekeyRow", "QueuedMessageRow", "ReportRow",
    "ReportedCommitmentRow", "ReviewerRow", "ScoreRow", "StorageError", "make_engine", "upgrade",
]

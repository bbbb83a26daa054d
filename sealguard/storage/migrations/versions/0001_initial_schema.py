"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-28 06:01:02.812533
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('accounts',
    sa.Column('id', sa.String(length=21), nullable=False),
    sa.Column('identity_key', sa.String(length=64), nullable=False),
    sa.Column('curve_key', sa.String(length=64), nullable=False),
    sa.Column('handle', sa.String(length=32), nullable=True),
    sa.Column('net_bucket', sa.String(length=13), nullable=False),
    sa.Column('client_kind', sa.String(length=16), nullable=False),
    sa.Column('registered_at', sa.BigInteger(), nullable=False),
    sa.Column('deleted_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_accounts')),
    sa.UniqueConstraint('handle', name=op.f('uq_accounts_handle')),
    sa.UniqueConstraint('identity_key', name=op.f('uq_accounts_identity_key'))
    )
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_accounts_net_bucket'), ['net_bucket'], unique=False)

    op.create_table('appeals',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('account', sa.String(length=21), nullable=False),
    sa.Column('decision_id', sa.String(length=33), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('filed_at', sa.BigInteger(), nullable=False),
    sa.Column('resolved_at', sa.BigInteger(), nullable=True),
    sa.Column('resolved_by', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_appeals'))
    )
    with op.batch_alter_table('appeals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_appeals_account'), ['account'], unique=False)
        batch_op.create_index(batch_op.f('ix_appeals_decision_id'), ['decision_id'], unique=False)

    op.create_table('audit_log',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('ts', sa.BigInteger(), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=48), nullable=False),
    sa.Column('target', sa.String(length=64), nullable=True),
    sa.Column('reason_code', sa.String(length=32), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('evidence', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_log_target'), ['target'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_log_ts'), ['ts'], unique=False)

    op.create_table('blocks',
    sa.Column('blocker', sa.String(length=21), nullable=False),
    sa.Column('blocked', sa.String(length=21), nullable=False),
    sa.Column('ts', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('blocker', 'blocked', name=op.f('pk_blocks'))
    )
    op.create_table('cases',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('account', sa.String(length=21), nullable=False),
    sa.Column('queue', sa.String(length=24), nullable=False),
    sa.Column('priority', sa.Float(), nullable=False),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('model_version', sa.String(length=64), nullable=True),
    sa.Column('rule_ids', sa.JSON(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('claimed_by', sa.String(length=64), nullable=True),
    sa.Column('claimed_at', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('closed_at', sa.BigInteger(), nullable=True),
    sa.Column('decision_id', sa.String(length=33), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cases'))
    )
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cases_account'), ['account'], unique=False)
        batch_op.create_index('ix_cases_queue_status_priority', ['queue', 'status', 'priority'], unique=False)

    op.create_table('contacts',
    sa.Column('account', sa.String(length=21), nullable=False),
    sa.Column('contact', sa.String(length=21), nullable=False),
    sa.Column('added_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('account', 'contact', name=op.f('pk_contacts'))
    )
    op.create_table('decisions',
    sa.Column('id', sa.String(length=33), nullable=False),
    sa.Column('account', sa.String(length=21), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('reason_code', sa.String(length=32), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=True),
    sa.Column('published_at', sa.BigInteger(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=True),
    sa.Column('evidence', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_decisions'))
    )
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.create_index('ix_decisions_account_created', ['account', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_decisions_status'), ['status'], unique=False)

    op.create_table('detection_checkpoints',
    sa.Column('consumer_group', sa.String(length=64), nullable=False),
    sa.Column('topic', sa.String(length=64), nullable=False),
    sa.Column('partition', sa.Integer(), nullable=False),
    sa.Column('next_offset', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.LargeBinary(), nullable=True),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('consumer_group', 'topic', 'partition', name=op.f('pk_detection_checkpoints'))
    )
    op.create_table('enforcement_applications',
    sa.Column('decision_id', sa.String(length=33), nullable=False),
    sa.Column('node', sa.String(length=32), nullable=False),
    sa.Column('applied_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('decision_id', 'node', name=op.f('pk_enforcement_applications'))
    )
    op.create_table('group_members',
    sa.Column('group_id', sa.String(length=21), nullable=False),
    sa.Column('account', sa.String(length=21), nullable=False),
    sa.Column('added_by', sa.String(length=21), nullable=False),
    sa.Column('added_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('group_id', 'account', name=op.f('pk_group_members'))
    )
    with op.batch_alter_table('group_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_group_members_account'), ['account'], unique=False)

    op.create_table('groups',
    sa.Column('id', sa.String(length=21), nullable=False),
    sa.Column('created_by', sa.String(length=21), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_groups'))
    )
    op.create_table('labels',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('account', sa.String(length=21), nullable=False),
    sa.Column('label', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('decision_id', sa.String(length=33), nullable=True),
    sa.Column('ts', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_labels'))
    )
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_labels_account'), ['account'], unique=False)

    op.create_table('media_blobs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('owner', sa.String(length=21), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.Column('fetch_count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_media_blobs'))
    )
    with op.batch_alter_table('media_blobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_media_blobs_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_media_blobs_owner'), ['owner'], unique=False)

    op.create_table('message_commitments',
    sa.Column('commitment', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.Column('reported', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('commitment', name=op.f('pk_message_commitments'))
    )
    with op.batch_alter_table('message_commitments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_message_commitments_expires_at'), ['expires_at'], unique=False)

    op.create_table('notices',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('account', sa.String(length=21), nullable=False),
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.Column('decision_id', sa.String(length=33), nullable=True),
    sa.Column('reason_code', sa.String(length=32), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('delivered_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notices'))
    )
    with op.batch_alter_table('notices', schema=None) as batch_op:
        batch_op.create_index('ix_notices_account_delivered', ['account', 'delivered_at'], unique=False)

    op.create_table('prekeys',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('account', sa.String(length=21), nullable=False),
    sa.Column('key_id', sa.String(length=32), nullable=False),
    sa.Column('public_key', sa.String(length=64), nullable=False),
    sa.Column('is_fallback', sa.Boolean(), nullable=False),
    sa.Column('claimed_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_prekeys'))
    )
    with op.batch_alter_table('prekeys', schema=None) as batch_op:
        batch_op.create_index('ix_prekeys_account_claimed', ['account', 'claimed_at'], unique=False)

    op.create_table('queued_messages',
    sa.Column('message_id', sa.String(length=32), nullable=False),
    sa.Column('recipient', sa.String(length=21), nullable=False),
    sa.Column('sender', sa.String(length=21), nullable=False),
    sa.Column('group_id', sa.String(length=21), nullable=True),
    sa.Column('kind', sa.Integer(), nullable=False),
    sa.Column('ciphertext', sa.LargeBinary(), nullable=False),
    sa.Column('enqueued_at', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.Column('withheld', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('message_id', 'recipient', name=op.f('pk_queued_messages'))
    )
    with op.batch_alter_table('queued_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_queued_messages_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_queued_messages_sender'), ['sender'], unique=False)
        batch_op.create_index('ix_queued_recipient_enqueued', ['recipient', 'enqueued_at'], unique=False)

    op.create_table('reports',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('reporter', sa.String(length=21), nullable=False),
    sa.Column('reported', sa.String(length=21), nullable=False),
    sa.Column('reason_code', sa.String(length=32), nullable=False),
    sa.Column('messages_named', sa.Integer(), nullable=False),
    sa.Column('messages_verified', sa.Integer(), nullable=False),
    sa.Column('ts', sa.BigInteger(), nullable=False),
    sa.Column('decision_id', sa.String(length=33), nullable=True),
    sa.Column('reporter_notified_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reports'))
    )
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reports_reported'), ['reported'], unique=False)
        batch_op.create_index(batch_op.f('ix_reports_reporter'), ['reporter'], unique=False)

    op.create_table('reviewers',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=256), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('disabled', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reviewers')),
    sa.UniqueConstraint('username', name=op.f('uq_reviewers_username'))
    )
    op.create_table('scores',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('account', sa.String(length=21), nullable=False),
    sa.Column('model_version', sa.String(length=64), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('contributions', sa.JSON(), nullable=True),
    sa.Column('shadow', sa.Boolean(), nullable=False),
    sa.Column('ts', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_scores'))
    )
    with op.batch_alter_table('scores', schema=None) as batch_op:
        batch_op.create_index('ix_scores_account_ts', ['account', 'ts'], unique=False)
        batch_op.create_index(batch_op.f('ix_scores_ts'), ['ts'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('scores', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_scores_ts'))
        batch_op.drop_index('ix_scores_account_ts')

    op.drop_table('scores')
    op.drop_table('reviewers')
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reports_reporter'))
        batch_op.drop_index(batch_op.f('ix_reports_reported'))

    op.drop_table('reports')
    with op.batch_alter_table('queued_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_queued_recipient_enqueued')
        batch_op.drop_index(batch_op.f('ix_queued_messages_sender'))
        batch_op.drop_index(batch_op.f('ix_queued_messages_expires_at'))

    op.drop_table('queued_messages')
    with op.batch_alter_table('prekeys', schema=None) as batch_op:
        batch_op.drop_index('ix_prekeys_account_claimed')

    op.drop_table('prekeys')
    with op.batch_alter_table('notices', schema=None) as batch_op:
        batch_op.drop_index('ix_notices_account_delivered')

    op.drop_table('notices')
    with op.batch_alter_table('message_commitments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_message_commitments_expires_at'))

    op.drop_table('message_commitments')
    with op.batch_alter_table('media_blobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_media_blobs_owner'))
        batch_op.drop_index(batch_op.f('ix_media_blobs_expires_at'))

    op.drop_table('media_blobs')
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_labels_account'))

    op.drop_table('labels')
    op.drop_table('groups')
    with op.batch_alter_table('group_members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_group_members_account'))

    op.drop_table('group_members')
    op.drop_table('enforcement_applications')
    op.drop_table('detection_checkpoints')
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_decisions_status'))
        batch_op.drop_index('ix_decisions_account_created')

    op.drop_table('decisions')
    op.drop_table('contacts')
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_index('ix_cases_queue_status_priority')
        batch_op.drop_index(batch_op.f('ix_cases_account'))

    op.drop_table('cases')
    op.drop_table('blocks')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_log_ts'))
        batch_op.drop_index(batch_op.f('ix_audit_log_target'))

    op.drop_table('audit_log')
    with op.batch_alter_table('appeals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_appeals_decision_id'))
        batch_op.drop_index(batch_op.f('ix_appeals_account'))

    op.drop_table('appeals')
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_accounts_net_bucket'))

    op.drop_table('accounts')

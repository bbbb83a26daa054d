"""relay: report commitments in blocks (commitment_blocks) and the reported ones (reported_commitments)

Revision ID: 0009_commitment_blocks
Revises: 0001
Create Date: 2026-11-29

A branch of its own off 0001 (like 0004_moderation, 0008_cluster); `upgrade heads` applies it.
message_commitments stays: reports still read its rows, which expire within their 30-day TTL.
commitment_blocks holds blocks of three levels — a flush's digests of one first byte, consecutive
flushes' of a closed hour regrouped by first byte, a closed hour's of one two-byte prefix —, all found
by (level, prefix, period, id).
"""
import sqlalchemy as sa
from alembic import op

revision = '0009_commitment_blocks'
down_revision = '0001'
branch_labels = ('relay',)
depends_on = None


def upgrade() -> None:
    op.create_table('commitment_blocks',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('level', sa.SmallInteger(), nullable=False),
    sa.Column('prefix', sa.Integer(), nullable=False),
    sa.Column('period', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('digests', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_commitment_blocks'))
    )
    with op.batch_alter_table('commitment_blocks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_commitment_blocks_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index('ix_commitment_blocks_level_prefix_period', ['level', 'prefix', 'period', 'id'], unique=False)

    op.create_table('reported_commitments',
    sa.Column('commitment', sa.LargeBinary(length=16), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('commitment', name=op.f('pk_reported_commitments'))
    )
    with op.batch_alter_table('reported_commitments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reported_commitments_expires_at'), ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('reported_commitments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reported_commitments_expires_at'))

    op.drop_table('reported_commitments')
    with op.batch_alter_table('commitment_blocks', schema=None) as batch_op:
        batch_op.drop_index('ix_commitment_blocks_level_prefix_period')
        batch_op.drop_index(batch_op.f('ix_commitment_blocks_expires_at'))

    op.drop_table('commitment_blocks')

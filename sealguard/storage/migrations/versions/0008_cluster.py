"""cluster: relay nodes (heartbeats) and routes (account → node)

Revision ID: 0008_cluster
Revises: 0001
Create Date: 2026-11-28

A branch of its own off 0001 (like 0004_moderation); `upgrade heads` applies it.
"""
import sqlalchemy as sa
from alembic import op

revision = '0008_cluster'
down_revision = '0001'
branch_labels = ('cluster',)
depends_on = None


def upgrade() -> None:
    op.create_table('relay_nodes',
                    sa.Column('node', sa.String(length=32), nullable=False),
                    sa.Column('incarnation', sa.BigInteger(), nullable=False),
                    sa.Column('inbox_topic', sa.String(length=200), nullable=False),
                    sa.Column('started_at', sa.BigInteger(), nullable=False),
                    sa.Column('last_seen', sa.BigInteger(), nullable=False),
                    sa.Column('stopped_at', sa.BigInteger(), nullable=True),
                    sa.PrimaryKeyConstraint('node', name=op.f('pk_relay_nodes')))
    op.create_table('relay_routes',
                    sa.Column('account', sa.String(length=21), nullable=False),
                    sa.Column('node', sa.String(length=32), nullable=False),
                    sa.Column('updated_at', sa.BigInteger(), nullable=False),
                    sa.PrimaryKeyConstraint('account', name=op.f('pk_relay_routes')))
    op.create_index(op.f('ix_relay_routes_node'), 'relay_routes', ['node'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_relay_routes_node'), table_name='relay_routes')
    op.drop_table('relay_routes')
    op.drop_table('relay_nodes')

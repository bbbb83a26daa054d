"""The simulator's exception tree.

    SimulatorError            root: anything the simulator refuses or cannot do
    ├── ScenarioError         a scenario file is unreadable or invalid (simulator.scenario)
    └── SignalsFileError      a signals Parquet file cannot be read back (simulator.offline)
"""

from __future__ import annotations


class SimulatorError(Exception):
    """Root of every error the simulator raises."""

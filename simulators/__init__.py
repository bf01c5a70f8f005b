"""Modbus devices and MQTT retrofit boards that behave like a recovered plant's old machines,
with faults on demand.

Shares no code with the collector on purpose (DESIGN.md): a shared bug would hide the collector's.
"""

from simulators.scenario import Scenario, ScenarioError, generate_scenario, load_scenario
from simulators.simulator import Endpoint, Fault, Simulator, run_scenario

__all__ = [
    "Endpoint",
    "Fault",
    "Scenario",
    "ScenarioError",
    "Simulator",
    "generate_scenario",
    "load_scenario",
    "run_scenario",
]

"""The bundle spec: ``modelhall.yaml`` parsed into typed objects."""

from modelhall.spec.load import SPEC_FILENAME, SpecError, SpecProblem, load_spec_file, parse_spec_json, parse_spec_yaml
from modelhall.spec.model import Spec

__all__ = ["SPEC_FILENAME", "Spec", "SpecError", "SpecProblem", "load_spec_file", "parse_spec_json", "parse_spec_yaml"]

"""Adapters that plug rattn-eval models into other harnesses.

`rattn_eval.integrations.lm_eval` registers the lm-evaluation-harness model "rattn"; it is
imported on demand only, so that importing the package never pulls in lm-eval.
"""

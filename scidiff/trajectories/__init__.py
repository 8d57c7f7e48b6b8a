"""Trajectories: fields in time, window scores composed into trajectory scores, assimilation."""

"""Rewards: reward models, their ensemble objectives and the gold reward behind one interface."""

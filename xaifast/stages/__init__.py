"""Stages of a run: sources (folder walk, file list, COCO, DataLoader), decode, render, sinks, journal."""

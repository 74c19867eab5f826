"""Thin rclpy layer of reasoning_seg: message conversions, nodes and tools.

Everything that imports rclpy or ROS message packages lives here, so the core package stays
importable (and testable) without a ROS installation.
"""

"""reasoning_seg: 3D reasoning segmentation on a fused RGB-D voxel map (MLLM-For3D + REALM style).

The package is split into a ROS-free core (this directory, by pipeline stage) and a thin rclpy layer
(:mod:`reasoning_seg.ros`). The ROS interfaces are the separate package ``reasoning_seg_msgs``
(``reasoning_seg_msgs.msg``, ``.srv``, ``.action``), built by rosidl.
"""

__version__ = "0.1.0"

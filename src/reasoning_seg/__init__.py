"""reasoning_seg: 3D reasoning segmentation on a fused RGB-D voxel map (MLLM-For3D + REALM style).

The package is split into a ROS-free core (this directory) and a thin rclpy layer
(:mod:`reasoning_seg.ros`). The generated ROS interfaces (``reasoning_seg.msg``, ``.srv``,
``.action``) are built by rosidl into a separate install tree; ``extend_path`` lets them join this
package when both are on ``sys.path`` (on a colcon install they share one directory anyway).
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"

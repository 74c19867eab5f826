"""Data in and out: recorded sequences, image encodings, colour/depth pairing, TF trees.

``sequence_io`` (the sun3d-style folder format), ``scannet_io`` (ScanNet's export layout),
``image_codec`` (``sensor_msgs/Image`` encodings <-> numpy, ROS-free), ``frame_sync`` (pairing
colour and depth by stamp), ``tf_tree`` (camera poses from recorded TF), ``synthetic_stream`` (an
endless simulated stream for soak tests). May import: the foundation and ``mapping.frames``.
"""

"""Pictures and pages a person reads: why an answer is what it is.

``render`` draws the map as a cut-away model, ``figure`` puts the target and the 2D model's views
side by side, ``page`` writes one self-contained HTML report, ``visualize`` the benchmark's top and
side views. ROS-free (numpy + Pillow); it may import the core's result types and nothing from
``ros/``.
"""

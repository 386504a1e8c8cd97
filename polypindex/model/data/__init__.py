"""Data and crops: configs, COCO, tracklets, preprocessing, the embedding path's protocol."""

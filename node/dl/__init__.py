"""The multimodal deep model (issue 13): a small 3D ResNet on lesion-centred crops, fused with the standardised
radiomic vector and the lesion-site one-hot, three heads (ER, PR, HER2) trained with a weighted multi-task loss.

Torch is imported only by the training modules (:mod:`node.dl.net`, :mod:`node.dl.train`, :mod:`node.dl.export`);
the crops (:mod:`node.imaging.crops`, shared with serving), the synthetic crops (:mod:`node.dl.synthetic`) and
the dataset join (:mod:`node.dl.data`) are numpy only, and the node serves the exported ONNX bundle with onnxruntime
(:mod:`node.model.dl_bundle`). Research use only, not for diagnosis.
"""

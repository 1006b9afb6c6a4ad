"""A PaddleSeg file-list data set that checks what it reads: every listed
file exists (checked when built), every mask has its image's size and only
known labels (checked when read), each failure one error naming the file.
Labels listed in `ignore_labels` (CamVid's 11, "void") become the ignore
index as they are read, so the data on disk stays as it is."""
import os

import cv2
import numpy as np
import paddle
from PIL import Image

from paddleseg.cvlibs import manager
from paddleseg.datasets import Dataset

from ppkd.data.voc import check_image_complete, read_label_list
from ppkd.errors import PPKDError


def read_image(path):
    """An image file as float32 BGR, checked whole (a truncated JPEG is named)."""
    check_image_complete(path)
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise PPKDError(f'cannot read image {path}')
    return image.astype('float32')


@manager.DATASETS.add_component
class CheckedSegDataset(Dataset):
    """PaddleSeg's `Dataset` (a list file of `image label` lines under
    `dataset_root`) plus `label_list` (class names, one a line, optional)
    and `ignore_labels` (mask values read as `ignore_index`)."""

    def __init__(self, mode, dataset_root, transforms, num_classes, train_path=None, val_path=None,
                 test_path=None, label_list=None, ignore_labels=(), ignore_index=255, **kwargs):
        if not os.path.isdir(dataset_root):
            raise PPKDError(f'dataset_root does not exist: {dataset_root}')
        list_path = {'train': train_path, 'val': val_path, 'test': test_path}.get(str(mode).lower())
        if list_path and not os.path.isfile(list_path):
            raise PPKDError(f'{mode} list not found: {list_path}')
        super().__init__(mode, dataset_root, transforms, num_classes, train_path=train_path, val_path=val_path,
                         test_path=test_path, ignore_index=ignore_index, **kwargs)
        for image, label in self.file_list:
            for path in (image, label):
                if not os.path.isfile(path):
                    raise PPKDError(f'{list_path}: listed file not found: {path}')
        self.class_names = (read_label_list(os.path.join(dataset_root, label_list)) if label_list
                            else [f'class{i}' for i in range(num_classes)])
        if len(self.class_names) != num_classes:
            raise PPKDError(f'{os.path.join(dataset_root, label_list)}: {len(self.class_names)} names for '
                            f'num_classes {num_classes}')
        self.ignore_labels = [int(v) for v in ignore_labels]

    def read(self, index):
        """(image as float32 BGR, mask with ignore_labels mapped) of one line, checked."""
        image_path, label_path = self.file_list[index]
        image = read_image(image_path)
        try:
            label = np.asarray(Image.open(label_path))
        except OSError as e:
            raise PPKDError(f'cannot read mask {label_path}: {e}') from None
        if label.ndim != 2:
            raise PPKDError(f'{label_path}: a mask must have one channel of class indices, got shape {label.shape}')
        if label.shape != image.shape[:2]:
            raise PPKDError(f'{label_path}: mask is {label.shape[1]}×{label.shape[0]}, its image {image_path} is '
                            f'{image.shape[1]}×{image.shape[0]}')
        label = label.astype('int64')
        for value in self.ignore_labels:
            label[label == value] = self.ignore_index
        bad = np.unique(label[(label >= self.num_classes) & (label != self.ignore_index)])
        if bad.size:
            raise PPKDError(f'{label_path}: labels {bad.tolist()} outside the {self.num_classes} classes '
                            f'(and not ignore_index {self.ignore_index}; list them in ignore_labels to ignore them)')
        return image, label.astype('uint8')

    def __getitem__(self, index):
        image, label = self.read(index)
        data = {'img': image, 'label': label, 'trans_info': [], 'gt_fields': []}
        if self.mode == 'val':  # the mask stays at the image's size: scored there
            data = self.transforms(data)
            data['label'] = data['label'][np.newaxis]
        else:
            data['gt_fields'].append('label')
            data = self.transforms(data)
        return data


class UnlabeledSegImages(paddle.io.Dataset):
    """Images without masks (`distill.unlabeled`), through the training
    set's own transforms, so they are scaled, cropped, flipped and
    normalised as the labelled ones are."""

    def __init__(self, paths, transforms):
        self.paths, self.transforms = list(paths), transforms

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        image = read_image(self.paths[index])
        return {'img': self.transforms({'img': image, 'trans_info': [], 'gt_fields': []})['img']}

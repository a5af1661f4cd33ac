#!/usr/bin/env python
"""Packaging for basicsr-mh: the multi-output deblurring plugin for BasicSR."""
from setuptools import find_packages, setup

import os

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    """Return the version string from ``basicsr_mh/version.py`` without importing the package."""
    scope = {}
    with open(os.path.join(HERE, 'basicsr_mh', 'version.py'), encoding='utf-8') as f:
        exec(f.read(), scope)
    return scope['__version__']


def read_readme():
    with open(os.path.join(HERE, 'README.md'), encoding='utf-8') as f:
        return f.read()


setup(
    name='basicsr-mh',
    version=read_version(),
    description='Multi-output (multi-head) deblurring for BasicSR: "Multi-Outputs Is All You Need For Deblur"',
    long_description=read_readme(),
    long_description_content_type='text/markdown',
    keywords='computer vision, deblurring, image restoration, basicsr, multi-head',
    packages=find_packages(exclude=('options', 'tests', 'scripts', 'benchmarks', 'experiments', 'results')),
    include_package_data=True,
    package_data={'basicsr_mh': ['options/*.yml']},
    python_requires='>=3.8',
    install_requires=[
        'basicsr>=1.4.2',
        'torch>=1.7',
        'torchvision',
        'numpy',
        'opencv-python',
        'pyyaml',
        'lmdb',
        'scikit-image',
        'tqdm',
        'matplotlib',
    ],
    extras_require={'test': ['pytest', 'hypothesis']},
    entry_points={
        'console_scripts': [
            'basicsr-mh=basicsr_mh_cli:entry',
            'basicsr=basicsr_mh_cli:entry',
        ],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'License :: OSI Approved :: Apache Software License',
        'Operating System :: OS Independent',
    ],
    license='Apache License 2.0',
    zip_safe=False,
)

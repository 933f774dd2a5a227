//! Which data a model was trained on, by content. Models and checkpoints record the MD5 of each
//! file read, so that resuming, evaluating or predicting on other files is noticed, and a folder
//! is named after a published dataset only when its files are that dataset's, digest for digest.

use std::collections::{BTreeMap, HashMap};

use clap::ValueEnum;

use super::DatasetKind;

/// MD5 of each file's decompressed content, by file stem (`t10k-images-idx3-ubyte`, ...).
pub type FileDigests = BTreeMap<String, String>;

/// The name of data that matches no published dataset.
pub const CUSTOM: &str = "custom";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataIdentity {
    /// The published dataset the files are, or None for custom data.
    pub dataset: Option<DatasetKind>,
    /// Whose class names the labels carry: `dataset`'s, or for custom data the one asked for
    /// (MNIST's digits unless told otherwise).
    pub labels: DatasetKind,
    /// The digests of the files that were read: all four for training, the test pair for eval.
    /// Empty for models written before digests were recorded.
    pub md5: FileDigests,
    /// An image folder's class names (its sub-folders'), where the labels are not a known
    /// dataset's.
    pub classes: Option<Vec<String>>,
}

impl DataIdentity {
    /// Names files by their digests: a published dataset where every digest is that dataset's
    /// for the same file, else custom data whose labels are `custom_labels`'.
    pub fn identify(md5: FileDigests, custom_labels: DatasetKind) -> Self {
        let dataset = DatasetKind::value_variants().iter().copied().find(|kind| {
            let published = kind.source().files;
            !md5.is_empty()
                && md5.iter().all(|(stem, digest)| {
                    published
                        .iter()
                        .any(|file| &file.stem == stem && &file.md5 == digest)
                })
        });
        DataIdentity {
            dataset,
            labels: dataset.unwrap_or(custom_labels),
            md5,
            classes: None,
        }
    }

    /// The published files of `kind`, all four.
    pub fn published(kind: DatasetKind) -> Self {
        let md5 = kind.source().files.into_iter().map(|f| (f.stem, f.md5));
        DataIdentity {
            dataset: Some(kind),
            labels: kind,
            md5: md5.collect(),
            classes: None,
        }
    }

    /// `mnist`, `fashion-mnist` or `custom`.
    pub fn name(&self) -> &'static str {
        self.dataset.map_or(CUSTOM, DatasetKind::name)
    }

    pub fn class_names(&self) -> Vec<&str> {
        match &self.classes {
            Some(classes) => classes.iter().map(String::as_str).collect(),
            None => self.labels.class_names().to_vec(),
        }
    }

    /// The name, and for custom data what tells two sets apart: the leading digits of each
    /// file's digest, and whose class names the labels carry.
    pub fn describe(&self) -> String {
        if self.dataset.is_some() || self.md5.is_empty() {
            return self.name().to_string();
        }
        let digests: Vec<&str> = self.md5.values().map(|d| d.get(..8).unwrap_or(d)).collect();
        format!(
            "custom data (content MD5s {}; {} labels)",
            digests.join(" "),
            self.labels.name()
        )
    }

    /// Whether `read` (files read now) hold the data this identity (a model's) was made from:
    /// every file both have a digest of is the same. A model from before digests were recorded
    /// is compared by dataset name.
    pub fn same_as(&self, read: &DataIdentity) -> bool {
        let mut common = self
            .md5
            .iter()
            .filter_map(|(stem, digest)| read.md5.get(stem).map(|other| digest == other))
            .peekable();
        if common.peek().is_none() {
            return self.name() == read.name();
        }
        common.all(|same| same)
    }

    /// The `__metadata__` entries: `dataset` (a name or `custom`), `labels` (whose class names)
    /// and `data_md5` (a JSON object of file stem to digest).
    pub fn describe_in(&self, metadata: &mut HashMap<String, String>) {
        metadata.insert("dataset".into(), self.name().into());
        metadata.insert("labels".into(), self.labels.name().into());
        metadata.insert(
            "data_md5".into(),
            serde_json::to_string(&self.md5).expect("strings serialise"),
        );
        if let Some(classes) = &self.classes {
            metadata.insert(
                "class_names".into(),
                serde_json::to_string(classes).expect("strings serialise"),
            );
        }
    }

    /// Reads back what `describe_in` wrote; files of earlier versions have only `dataset`.
    pub fn read_from(metadata: &HashMap<String, String>) -> Result<Self, String> {
        let kind = |key: &str, name: &str| {
            DatasetKind::from_str(name, true)
                .map_err(|_| format!("__metadata__ {key}: unknown dataset {name:?}"))
        };
        let name = metadata
            .get("dataset")
            .ok_or("__metadata__ lacks \"dataset\": not written by shadertrain")?;
        let dataset = if name == CUSTOM {
            None
        } else {
            Some(kind("dataset", name)?)
        };
        let labels = match metadata.get("labels") {
            Some(labels) => kind("labels", labels)?,
            None => dataset.unwrap_or_default(),
        };
        if dataset.is_some_and(|d| d != labels) {
            return Err(format!(
                "__metadata__ names dataset {name} with {} labels",
                labels.name()
            ));
        }
        let not_digests = || "__metadata__ data_md5 is not an object of MD5 digests".to_string();
        let md5: FileDigests = match metadata.get("data_md5") {
            Some(json) => serde_json::from_str(json).map_err(|_| not_digests())?,
            None => FileDigests::new(),
        };
        let is_md5 = |d: &String| d.len() == 32 && d.bytes().all(|b| b.is_ascii_hexdigit());
        if !md5.values().all(is_md5) {
            return Err(not_digests());
        }
        let classes = match metadata.get("class_names") {
            Some(json) => Some(
                serde_json::from_str::<Vec<String>>(json)
                    .map_err(|_| "__metadata__ class_names is not a list of names".to_string())?,
            ),
            None => None,
        };
        Ok(DataIdentity {
            dataset,
            labels,
            md5,
            classes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(kind: DatasetKind, stems: &[&str]) -> FileDigests {
        kind.source()
            .files
            .into_iter()
            .filter(|f| stems.contains(&f.stem.as_str()))
            .map(|f| (f.stem, f.md5))
            .collect()
    }

    const TEST_PAIR: [&str; 2] = ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

    #[test]
    fn published_files_are_named_and_others_are_custom() {
        let all = super::super::catalog::FILE_STEMS;
        for kind in [DatasetKind::Mnist, DatasetKind::FashionMnist] {
            let whole = DataIdentity::identify(published(kind, &all), DatasetKind::Mnist);
            assert_eq!(whole.dataset, Some(kind));
            assert_eq!(whole.labels, kind, "labels follow the files");
            let test = DataIdentity::identify(published(kind, &TEST_PAIR), DatasetKind::Mnist);
            assert_eq!(test.name(), kind.name());
        }
        // MNIST's test images with Fashion-MNIST's test labels are neither.
        let mut mixed = published(DatasetKind::Mnist, &TEST_PAIR);
        mixed.extend(published(DatasetKind::FashionMnist, &TEST_PAIR[1..]));
        let custom = DataIdentity::identify(mixed, DatasetKind::FashionMnist);
        assert_eq!((custom.dataset, custom.name()), (None, CUSTOM));
        assert_eq!(custom.labels, DatasetKind::FashionMnist);
        assert!(custom.describe().starts_with("custom data (content MD5s "));
        assert_eq!(
            DataIdentity::identify(FileDigests::new(), DatasetKind::Mnist).name(),
            CUSTOM
        );
    }

    #[test]
    fn sameness_compares_the_files_both_know() {
        let all = super::super::catalog::FILE_STEMS;
        let trained =
            DataIdentity::identify(published(DatasetKind::Mnist, &all), Default::default());
        let mnist_test = DataIdentity::identify(
            published(DatasetKind::Mnist, &TEST_PAIR),
            Default::default(),
        );
        let fashion_test = DataIdentity::identify(
            published(DatasetKind::FashionMnist, &TEST_PAIR),
            Default::default(),
        );
        assert!(trained.same_as(&mnist_test));
        assert!(!trained.same_as(&fashion_test));
        let legacy = DataIdentity {
            classes: None,
            md5: FileDigests::new(),
            ..trained.clone()
        };
        assert!(legacy.same_as(&mnist_test) && !legacy.same_as(&fashion_test));
    }

    #[test]
    fn metadata_round_trips_and_old_files_read() {
        let mut digests = published(DatasetKind::Mnist, &TEST_PAIR);
        digests.insert("t10k-labels-idx1-ubyte".into(), "0".repeat(32));
        let custom = DataIdentity::identify(digests, DatasetKind::FashionMnist);
        let mut metadata = HashMap::new();
        custom.describe_in(&mut metadata);
        assert_eq!(metadata["dataset"], "custom");
        assert_eq!(DataIdentity::read_from(&metadata), Ok(custom));
        let old = HashMap::from([("dataset".to_string(), "fashion-mnist".to_string())]);
        let read = DataIdentity::read_from(&old).unwrap();
        assert_eq!(read.dataset, Some(DatasetKind::FashionMnist));
        assert!(read.md5.is_empty());
        let lying = HashMap::from([
            ("dataset".to_string(), "mnist".to_string()),
            ("labels".to_string(), "fashion-mnist".to_string()),
        ]);
        assert!(DataIdentity::read_from(&lying).is_err());
        // Digests are 32 hex digits: other text (which `describe` would cut) is refused.
        let garbled = HashMap::from([
            ("dataset".to_string(), "custom".to_string()),
            (
                "data_md5".to_string(),
                r#"{"t10k-images-idx3-ubyte": "ééééé"}"#.to_string(),
            ),
        ]);
        assert!(DataIdentity::read_from(&garbled).is_err());
    }
}

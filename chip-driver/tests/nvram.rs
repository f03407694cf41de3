//! A software chip with NVRAM is the same chip after a restart: same serial and identity key,
//! same domain, so blobs sealed before the restart still load.

use cloudkey_chip::nvram::SoftNvram;
use cloudkey_chip::soft::{SoftChip, SoftChipConfig};
use cloudkey_chip::{
    ChipError, ChipExt, KeyId, KeySpec, KeyTemplate, KeyUsage, SecretBytes, SignMech,
};

fn chip(nvram: &SoftNvram) -> Result<SoftChip, ChipError> {
    SoftChip::new(SoftChipConfig {
        nvram: Some(nvram.clone()),
        ..SoftChipConfig::default()
    })
}

#[test]
fn a_restarted_chip_keeps_identity_and_domain_and_loads_old_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let nv = SoftNvram {
        path: dir.path().join("chip.nvram"),
        key: SecretBytes::new(vec![3; 32]),
    };
    let first = chip(&nv).unwrap();
    let info = first.info().unwrap();
    first.domain_generate().unwrap();
    let template = KeyTemplate {
        id: KeyId::random(),
        spec: KeySpec::EC_P256,
        usage: KeyUsage::SIGN | KeyUsage::VERIFY,
    };
    let key = first.generate_key_pair(template).unwrap();
    drop(first);

    let second = chip(&nv).unwrap();
    let again = second.info().unwrap();
    assert_eq!(again.serial, info.serial);
    assert_eq!(again.identity_key, info.identity_key);
    assert!(again.domain.is_some());
    let id = second.load_key(&key.blob).unwrap();
    let sig = second.sign(id, &SignMech::Ecdsa, &[1; 32]).unwrap();
    second
        .verify(
            &cloudkey_chip::KeyRef::Public(key.public.unwrap()),
            &SignMech::Ecdsa,
            &[1; 32],
            &sig,
        )
        .unwrap();

    // The domain also survives when it arrived chip to chip.
    let nv2 = SoftNvram {
        path: dir.path().join("other.nvram"),
        key: SecretBytes::new(vec![4; 32]),
    };
    let receiver = chip(&nv2).unwrap();
    let package = second
        .domain_export(&receiver.info().unwrap().identity_key)
        .unwrap();
    receiver.domain_import(&package).unwrap();
    drop(receiver);
    let receiver = chip(&nv2).unwrap();
    receiver.load_key(&key.blob).unwrap();

    // The NVRAM key is needed to power the chip on again.
    let wrong = SoftNvram {
        path: nv.path.clone(),
        key: SecretBytes::new(vec![5; 32]),
    };
    assert!(matches!(chip(&wrong), Err(ChipError::Internal(_))));
}

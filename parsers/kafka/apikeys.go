package kafka

// The table below lists every API key kmsg v1.15.0 knows (Kafka 4.x). Names
// are the lowercase API names, as Cilium's Kafka rules spell them
// ("produce", "offsetcommit", ...). ListOffsets is named "listoffsets";
// Cilium's older spelling "offsets" is accepted as an alias by APIKeyByName.

// APIKeyName returns the lowercase name of a Kafka API key, or "unknown".
func APIKeyName(key int16) string {
	switch key {
	case 0:
		return "produce"
	case 1:
		return "fetch"
	case 2:
		return "listoffsets"
	case 3:
		return "metadata"
	case 4:
		return "leaderandisr"
	case 5:
		return "stopreplica"
	case 6:
		return "updatemetadata"
	case 7:
		return "controlledshutdown"
	case 8:
		return "offsetcommit"
	case 9:
		return "offsetfetch"
	case 10:
		return "findcoordinator"
	case 11:
		return "joingroup"
	case 12:
		return "heartbeat"
	case 13:
		return "leavegroup"
	case 14:
		return "syncgroup"
	case 15:
		return "describegroups"
	case 16:
		return "listgroups"
	case 17:
		return "saslhandshake"
	case 18:
		return "apiversions"
	case 19:
		return "createtopics"
	case 20:
		return "deletetopics"
	case 21:
		return "deleterecords"
	case 22:
		return "initproducerid"
	case 23:
		return "offsetforleaderepoch"
	case 24:
		return "addpartitionstotxn"
	case 25:
		return "addoffsetstotxn"
	case 26:
		return "endtxn"
	case 27:
		return "writetxnmarkers"
	case 28:
		return "txnoffsetcommit"
	case 29:
		return "describeacls"
	case 30:
		return "createacls"
	case 31:
		return "deleteacls"
	case 32:
		return "describeconfigs"
	case 33:
		return "alterconfigs"
	case 34:
		return "alterreplicalogdirs"
	case 35:
		return "describelogdirs"
	case 36:
		return "saslauthenticate"
	case 37:
		return "createpartitions"
	case 38:
		return "createdelegationtoken"
	case 39:
		return "renewdelegationtoken"
	case 40:
		return "expiredelegationtoken"
	case 41:
		return "describedelegationtoken"
	case 42:
		return "deletegroups"
	case 43:
		return "electleaders"
	case 44:
		return "incrementalalterconfigs"
	case 45:
		return "alterpartitionassignments"
	case 46:
		return "listpartitionreassignments"
	case 47:
		return "offsetdelete"
	case 48:
		return "describeclientquotas"
	case 49:
		return "alterclientquotas"
	case 50:
		return "describeuserscramcredentials"
	case 51:
		return "alteruserscramcredentials"
	case 52:
		return "vote"
	case 53:
		return "beginquorumepoch"
	case 54:
		return "endquorumepoch"
	case 55:
		return "describequorum"
	case 56:
		return "alterpartition"
	case 57:
		return "updatefeatures"
	case 58:
		return "envelope"
	case 59:
		return "fetchsnapshot"
	case 60:
		return "describecluster"
	case 61:
		return "describeproducers"
	case 62:
		return "brokerregistration"
	case 63:
		return "brokerheartbeat"
	case 64:
		return "unregisterbroker"
	case 65:
		return "describetransactions"
	case 66:
		return "listtransactions"
	case 67:
		return "allocateproducerids"
	case 68:
		return "consumergroupheartbeat"
	case 69:
		return "consumergroupdescribe"
	case 70:
		return "controllerregistration"
	case 71:
		return "gettelemetrysubscriptions"
	case 72:
		return "pushtelemetry"
	case 73:
		return "assignreplicastodirs"
	case 74:
		return "listconfigresources"
	case 75:
		return "describetopicpartitions"
	case 76:
		return "sharegroupheartbeat"
	case 77:
		return "sharegroupdescribe"
	case 78:
		return "sharefetch"
	case 79:
		return "shareacknowledge"
	case 80:
		return "addraftvoter"
	case 81:
		return "removeraftvoter"
	case 82:
		return "updateraftvoter"
	case 83:
		return "initializesharegroupstate"
	case 84:
		return "readsharegroupstate"
	case 85:
		return "writesharegroupstate"
	case 86:
		return "deletesharegroupstate"
	case 87:
		return "readsharegroupstatesummary"
	case 88:
		return "streamsgroupheartbeat"
	case 89:
		return "streamsgroupdescribe"
	case 90:
		return "describesharegroupoffsets"
	case 91:
		return "altersharegroupoffsets"
	case 92:
		return "deletesharegroupoffsets"
	case 93:
		return "streamsgrouptopologydescriptionupdate"
	case 94:
		return "unregistercontroller"
	default:
		return "unknown"
	}
}

// APIKeyByName returns the API key for an API name (as used in
// CiliumNetworkPolicy `rules.kafka[].apiKey`). Matching is case-insensitive;
// "offsets" is accepted for ListOffsets.
func APIKeyByName(name string) (int16, bool) {
	switch lowerASCII(name) {
	case "offsets":
		return 2, true
	case "produce":
		return 0, true
	case "fetch":
		return 1, true
	case "listoffsets":
		return 2, true
	case "metadata":
		return 3, true
	case "leaderandisr":
		return 4, true
	case "stopreplica":
		return 5, true
	case "updatemetadata":
		return 6, true
	case "controlledshutdown":
		return 7, true
	case "offsetcommit":
		return 8, true
	case "offsetfetch":
		return 9, true
	case "findcoordinator":
		return 10, true
	case "joingroup":
		return 11, true
	case "heartbeat":
		return 12, true
	case "leavegroup":
		return 13, true
	case "syncgroup":
		return 14, true
	case "describegroups":
		return 15, true
	case "listgroups":
		return 16, true
	case "saslhandshake":
		return 17, true
	case "apiversions":
		return 18, true
	case "createtopics":
		return 19, true
	case "deletetopics":
		return 20, true
	case "deleterecords":
		return 21, true
	case "initproducerid":
		return 22, true
	case "offsetforleaderepoch":
		return 23, true
	case "addpartitionstotxn":
		return 24, true
	case "addoffsetstotxn":
		return 25, true
	case "endtxn":
		return 26, true
	case "writetxnmarkers":
		return 27, true
	case "txnoffsetcommit":
		return 28, true
	case "describeacls":
		return 29, true
	case "createacls":
		return 30, true
	case "deleteacls":
		return 31, true
	case "describeconfigs":
		return 32, true
	case "alterconfigs":
		return 33, true
	case "alterreplicalogdirs":
		return 34, true
	case "describelogdirs":
		return 35, true
	case "saslauthenticate":
		return 36, true
	case "createpartitions":
		return 37, true
	case "createdelegationtoken":
		return 38, true
	case "renewdelegationtoken":
		return 39, true
	case "expiredelegationtoken":
		return 40, true
	case "describedelegationtoken":
		return 41, true
	case "deletegroups":
		return 42, true
	case "electleaders":
		return 43, true
	case "incrementalalterconfigs":
		return 44, true
	case "alterpartitionassignments":
		return 45, true
	case "listpartitionreassignments":
		return 46, true
	case "offsetdelete":
		return 47, true
	case "describeclientquotas":
		return 48, true
	case "alterclientquotas":
		return 49, true
	case "describeuserscramcredentials":
		return 50, true
	case "alteruserscramcredentials":
		return 51, true
	case "vote":
		return 52, true
	case "beginquorumepoch":
		return 53, true
	case "endquorumepoch":
		return 54, true
	case "describequorum":
		return 55, true
	case "alterpartition":
		return 56, true
	case "updatefeatures":
		return 57, true
	case "envelope":
		return 58, true
	case "fetchsnapshot":
		return 59, true
	case "describecluster":
		return 60, true
	case "describeproducers":
		return 61, true
	case "brokerregistration":
		return 62, true
	case "brokerheartbeat":
		return 63, true
	case "unregisterbroker":
		return 64, true
	case "describetransactions":
		return 65, true
	case "listtransactions":
		return 66, true
	case "allocateproducerids":
		return 67, true
	case "consumergroupheartbeat":
		return 68, true
	case "consumergroupdescribe":
		return 69, true
	case "controllerregistration":
		return 70, true
	case "gettelemetrysubscriptions":
		return 71, true
	case "pushtelemetry":
		return 72, true
	case "assignreplicastodirs":
		return 73, true
	case "listconfigresources":
		return 74, true
	case "describetopicpartitions":
		return 75, true
	case "sharegroupheartbeat":
		return 76, true
	case "sharegroupdescribe":
		return 77, true
	case "sharefetch":
		return 78, true
	case "shareacknowledge":
		return 79, true
	case "addraftvoter":
		return 80, true
	case "removeraftvoter":
		return 81, true
	case "updateraftvoter":
		return 82, true
	case "initializesharegroupstate":
		return 83, true
	case "readsharegroupstate":
		return 84, true
	case "writesharegroupstate":
		return 85, true
	case "deletesharegroupstate":
		return 86, true
	case "readsharegroupstatesummary":
		return 87, true
	case "streamsgroupheartbeat":
		return 88, true
	case "streamsgroupdescribe":
		return 89, true
	case "describesharegroupoffsets":
		return 90, true
	case "altersharegroupoffsets":
		return 91, true
	case "deletesharegroupoffsets":
		return 92, true
	case "streamsgrouptopologydescriptionupdate":
		return 93, true
	case "unregistercontroller":
		return 94, true
	default:
		return 0, false
	}
}

// lowerASCII lowercases ASCII letters, without allocating when s is already
// lowercase.
func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if c := b[j]; 'A' <= c && c <= 'Z' {
					b[j] = c + 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

package local;

import io.apicurio.common.apps.config.DynamicConfigPropertyList;
import javax.enterprise.inject.Produces;
import javax.inject.Singleton;
import java.util.ArrayList;

/** Stands in for apicurio-common-app-components-config-index(-deployment), whose deployment jar Maven does not serve here. */
public class ConfigIndexStandIn {
    @Produces
    @Singleton
    DynamicConfigPropertyList dynamicConfigPropertyList() {
        return new DynamicConfigPropertyList(new ArrayList<>());
    }
}
